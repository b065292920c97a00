"""Ray for the jobs: which Ray a job runs on (connect.py), whether it can hold the run
(resources.py), a head of one's own on this machine (head.py), submissions to a head
(submit.py) and the token they share (token.py)."""
from .connect import FORWARDED_ENV, RAY_HELP, RayChoiceError, init_ray, use_ray
from .resources import ClusterTooSmall, wait_for

__all__ = ["FORWARDED_ENV", "RAY_HELP", "ClusterTooSmall", "RayChoiceError", "init_ray", "use_ray", "wait_for"]
