"""wait_interactive's progress display: a text bar redrawn in place on a terminal, or an
ipywidgets bar in a Jupyter kernel (ipyparallel uses tqdm's two for the same)."""

import sys

_BAR_WIDTH = 20


def _in_kernel():
    ipython = sys.modules.get("IPython")  # not imported: not in a kernel (and no slow import)
    if ipython is None:
        return False
    ip = ipython.get_ipython()
    return ip is not None and getattr(ip, "kernel", None) is not None


def progress(total, desc, file=None, widget=None):
    """A progress display for `total` tasks: widget=None picks the widget in a Jupyter kernel
    when ipywidgets 7 or later imports, the text bar elsewhere."""
    if widget is None:
        widget = False
        if file is None and _in_kernel():
            try:
                import ipywidgets
            except ImportError:
                pass
            else:
                # Older ones (Debian 12 ships 6.0) speak a widget protocol today's front ends and
                # nbclient no longer do: a headless `jupyter nbconvert --execute` fails on their
                # first message (KeyError 'state'). The text bar works everywhere.
                widget = _major_version(ipywidgets) >= 7
    if widget:
        return WidgetProgress(total, desc)
    return TextProgress(total, desc, sys.stderr if file is None else file)


def _major_version(module):
    try:
        return int(str(getattr(module, "__version__", "0")).split(".")[0])
    except ValueError:
        return 0


def _status(n, total, elapsed):
    return f"{n:4d}/{total} tasks finished after {int(elapsed):4d} s"


class TextProgress:
    """`desc: |#######-------------|  35%    7/20 tasks finished after    3 s`, redrawn with a
    carriage return when it changes; a line break (and 'done' once all finished) at close."""

    def __init__(self, total, desc, file):
        self.total, self.desc, self.file = total, desc, file
        self._shown = ""

    def line(self, n, elapsed):
        fraction = n / self.total if self.total else 1.0
        filled = int(round(fraction * _BAR_WIDTH))
        bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
        return f"{self.desc}: |{bar}| {int(fraction * 100):3d}% {_status(n, self.total, elapsed)}"

    def update(self, n, elapsed):
        text = self.line(n, elapsed)
        if text != self._shown:
            # Padded so that a shorter line covers the longer one before it.
            self.file.write("\r" + text.ljust(len(self._shown)))
            self.file.flush()
            self._shown = text

    def clear(self):
        """Blanks the line, so that other text can be printed; the next update redraws it."""
        if self._shown:
            self.file.write("\r" + " " * len(self._shown) + "\r")
            self.file.flush()
            self._shown = ""

    def close(self, n, elapsed, done):
        self.update(n, elapsed)
        self.file.write("\ndone\n" if done else "\n")
        self.file.flush()


class WidgetProgress:
    """An ipywidgets IntProgress with the same status text beside it."""

    def __init__(self, total, desc):
        import ipywidgets
        from IPython.display import display
        self.bar = ipywidgets.IntProgress(min=0, max=max(total, 1), value=0, description=desc)
        self.label = ipywidgets.HTML(value=_status(0, total, 0))
        self.total = total
        self.box = ipywidgets.HBox([self.bar, self.label])
        display(self.box)

    def update(self, n, elapsed):
        self.bar.value = n
        self.label.value = _status(n, self.total, elapsed)

    def clear(self):
        pass  # output printed meanwhile goes below the widget

    def close(self, n, elapsed, done):
        self.update(n, elapsed)
        self.bar.bar_style = "success" if done else "warning"
