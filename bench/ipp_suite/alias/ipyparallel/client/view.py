from testudo import BroadcastView, DirectView, LoadBalancedView  # noqa: F401
