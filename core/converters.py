"""The URL path converter of database ids: `<id:job_id>`. Django's `<int:...>` takes any
number of digits, and an id past a 64-bit integer's range (2^63 and up) reaches the
database as an OverflowError, a 500; `<id:...>` takes 1 to 18 digits (every such number
fits), so a longer one matches no URL: a 404 (JSON under /api/, core/errors.py).
Registered when the core app is ready (core/apps.py), before any URLconf is loaded."""


class DatabaseIdConverter:
    regex = "[0-9]{1,18}"

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value: int) -> str:
        return str(value)

