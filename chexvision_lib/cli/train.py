"""`chexvision train`: one --flag per TrainConfig field, typed and documented by the dataclass."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path

from chexvision_lib.training.config import TrainConfig, field_help

NOT_FLAGS = ("func", "command", "debug", "resume", "config")
# torchrun reads any prefix of its own flags anywhere in the command line, even after the script
# (--log would be its --log-dir): under torchrun, --log is spelt --log-to.
ALIASES = {"log": ("--log-to",)}


def comma_separated(text: str) -> list[str]:
    """An argparse type: `a,b` -> ["a", "b"] (with action="extend", --flag may also repeat)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One --flag per TrainConfig field: its type, choices and help come from the dataclass."""
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        flags = ["--" + field.name.replace("_", "-"), *ALIASES.get(field.name, ())]
        hint = hints[field.name]
        args = typing.get_args(hint)
        default = field.default if field.default is not dataclasses.MISSING else None
        help_text = field_help(TrainConfig, field.name) + (
            f" (default: {default})" if default not in (None, ()) else ""
        )
        # SUPPRESS: only the flags given reach the config, so --resume can tell them apart.
        common = {"dest": field.name, "default": argparse.SUPPRESS, "help": help_text}
        if hint is bool:
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, **common)
        elif typing.get_origin(hint) is typing.Literal:
            parser.add_argument(*flags, choices=args, **common)
        elif typing.get_origin(hint) is tuple:  # repeatable, or comma-separated values
            parser.add_argument(*flags, type=comma_separated, action="extend", **common)
        else:
            base = next((a for a in args if a is not type(None)), hint) if args else hint
            parser.add_argument(*flags, type=base, **common)


def run_train(args: argparse.Namespace) -> None:
    from chexvision_lib.core.config import from_dict, read_json_object
    from chexvision_lib.training.checkpoints import load_checkpoint
    from chexvision_lib.training.loop import fit
    from chexvision_lib.training.recipes import config_with_recipe

    values = {k: v for k, v in vars(args).items() if k not in NOT_FLAGS}
    if args.resume:
        if args.config:
            raise ValueError("--resume continues the run with its own config; drop --config")
        saved = load_checkpoint(Path(args.resume) / "checkpoints" / "last.pt")["config"]
        extra = {k: v for k, v in values.items() if saved.get(k) != v}
        if extra:
            flags = sorted("--" + k.replace("_", "-") for k in extra)
            raise ValueError(f"--resume continues the run with its own config; drop {flags}")
        # The folder given is the run, wherever it has moved since it started.
        config = from_dict(TrainConfig, {**saved, "out": str(args.resume)})
    else:
        if args.config:
            values = {**read_json_object(args.config), **values}
        for required in ("cache", "out"):
            if required not in values:
                raise ValueError(f"--{required} is required (or --resume RUN_DIR)")
        try:
            config = config_with_recipe(values)
        except (TypeError, ValueError) as error:
            where = f"{args.config} (or its flags)" if args.config else "flags"
            raise ValueError(f"{where}: {error}") from None
    run = fit(config, resume=bool(args.resume))
    print(f"run folder: {run}")


def add_commands(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("train", help="train a model on a prepared cache")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run with its config")
    p.add_argument("--config", help="JSON file of TrainConfig values (flags override)")
    add_config_flags(p)
    p.set_defaults(func=run_train)
