"""What the command-line entry points share."""

import argparse
import sys


def run_command(action):
    """Run a command-line action; report a user error in one line instead of a traceback.

    Returns the exit status: 0, 1 for an error, 130 for an interruption.
    """
    try:
        action()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, KeyError, OSError) as err:  # CodecError is a ValueError
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 1
    return 0


def variable_list(text):
    """The --variables of every command: comma-separated names, 'u,v' -> ['u', 'v']."""
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated variable names, got {text!r}")
    return names
