"""`python -m unimedvl.train RECIPE.yaml [key=value ...] [--export DIR]` (works under torchrun)."""

from __future__ import annotations

import argparse
import sys

from unimedvl.errors import UnimedvlError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unimedvl.train")
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. optim.lr=3e-4 total_steps=20")
    parser.add_argument("--export", default=None, help="write the released layout here when training ends")
    args = parser.parse_args(argv)
    try:
        from unimedvl.train.run import run_recipe

        run_recipe(args.recipe, args.overrides, export=args.export)
    except UnimedvlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
