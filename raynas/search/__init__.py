"""Search over subnets. Only this package imports ``ray.tune``."""
