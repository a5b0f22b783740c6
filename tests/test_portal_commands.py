"""The portal's own management commands: their refusals."""
import pytest
from django.core.management import CommandError, call_command


def test_serve_refuses_several_processes_in_the_embedded_default():
    """The embedded worker, broker and channel layer live in one process's memory."""
    with pytest.raises(CommandError, match="embedded default runs in one process"):
        call_command("serve", processes=2)
    with pytest.raises(CommandError, match="at least 1"):
        call_command("serve", processes=0)
