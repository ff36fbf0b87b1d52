"""Client()'s arguments: ipyparallel's that testudo refuses, and the login ones turned into the
native client's (docs/security.md, "Logins")."""

import getpass

# ipyparallel.Client arguments testudo does not act on. Passing one with a value that would
# change what ipyparallel does is an error here, never silently ignored.
_UNSUPPORTED_SSH_ARGUMENTS = ("password", "paramiko")
_HARMLESS_WHEN_UNSET = ("context", "debug", "profile_dir", "ipython_dir", "cluster_id", "cluster")


def check_ipyparallel_arguments(kwargs):
    for name, value in kwargs.items():
        if name in _UNSUPPORTED_SSH_ARGUMENTS:
            if value:
                raise NotImplementedError(
                    f"testudo.Client({name}=...): the SSH tunnel uses the OpenSSH client with your keys or "
                    "agent (sshkey=); passwords and paramiko are not supported")
        elif name in _HARMLESS_WHEN_UNSET:
            if value:
                raise TypeError(f"testudo.Client does not support {name}={value!r} "
                                "(name the cluster with profile= or its connection file with url_file=)")
        else:
            raise TypeError(f"testudo.Client() got an unexpected keyword argument {name!r}")


def login_arguments(username, password, token_provider, token_from, kerberos, service_principal):
    """The native client's login arguments for Client(username=..., token_provider=..., kerberos=...)."""
    chosen = [name for name, given in (("username", username is not None), ("token_provider", token_provider is not None),
                                       ("token_from", token_from is not None), ("kerberos", bool(kerberos)))
              if given]
    if len(chosen) > 1:
        raise ValueError(f"Client(): {' and '.join(chosen)} are different logins; give one")
    if password is not None and username is None:
        raise ValueError("Client(password=...) needs username=")
    if service_principal is not None and not kerberos:
        raise ValueError("Client(service_principal=...) needs kerberos=True")
    if username is not None:
        if not isinstance(username, str) or not username:
            raise ValueError("Client(username=...): a non-empty str")
        if password is None:
            # As the CLI does: ask on the terminal (once per client).
            cached = []

            def password():
                if not cached:
                    cached.append(getpass.getpass(f"Password for user {username}: "))
                return cached[0]
        elif not isinstance(password, (str, bytes)) and not callable(password):
            raise TypeError("Client(password=...): a str or a callable returning one")
        return dict(login_method="password", username=username, secret=password)
    if token_from is not None:
        if not isinstance(token_from, str) or not token_from.startswith(("file:", "env:", "command:")):
            raise ValueError("Client(token_from=...): 'file:PATH', 'env:NAME' or 'command:CMD'")
        # Read again each time a session needs a token, as the CLI's --token-from.
        return dict(login_method="token", secret_from=token_from)
    if token_provider is not None:
        if isinstance(token_provider, (str, bytes)) or callable(token_provider):
            secret = token_provider
        elif callable(getattr(token_provider, "token", None)):
            secret = token_provider.token  # Hazelcast-style provider object
        else:
            raise TypeError("Client(token_provider=...): a token (str), a callable returning one, "
                            "or an object with a token() method")
        return dict(login_method="token", secret=secret)
    if kerberos:
        return dict(login_method="kerberos", service=str(service_principal or ""))
    return {}
