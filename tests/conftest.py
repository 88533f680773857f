"""Shared by the tests: a user's kernel, registered as the README shows, so that every test module sees it."""

from lionk.kernels import Kernel, register_kernel


@register_kernel
class Softsign(Kernel):
    """A user's elementwise kernel, declared as one class: grad K(c) = c / (1 + |c|) (K(x) = |x| - log(1 + |x|))."""

    name = "softsign"

    def formula(self, c):
        return c / (1 + abs(c))
