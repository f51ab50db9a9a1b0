"""The `modelpress` command: `modelpress serve ...`, `modelpress loadtest ...` and `modelpress tune-serving ...`."""

from __future__ import annotations

import argparse
import sys

from modelpress.core.errors import ModelpressError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelpress", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    from modelpress.loadtest import cli as loadtest_cli
    from modelpress.loadtest import tuning_cli
    from modelpress.serving import cli as serving_cli

    serving_cli.add_serve(commands)
    loadtest_cli.add_loadtest(commands)
    tuning_cli.add_tune_serving(commands)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except ModelpressError as exc:
        print(f"modelpress {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
