"""Kernel options shared by every booting command: parsed, checked, and reaching the scheduler."""

from __future__ import annotations

import argparse

import pytest

from llmos.kernel import params
from llmos.userland.system import (
    SystemOptions,
    add_system_arguments,
    build_config,
    options_from_args,
)


def parse(*argv: str) -> SystemOptions:
    parser = argparse.ArgumentParser()
    add_system_arguments(parser)
    return options_from_args(parser.parse_args(list(argv)))


def test_min_residency_reaches_the_scheduler():
    assert parse("--device", "sim").min_residency_steps == params.MIN_RESIDENCY_STEPS
    options = parse("--device", "sim", "--min-residency", "0")
    assert build_config(options).scheduler.min_residency_steps == 0


def test_a_negative_min_residency_is_refused():
    with pytest.raises(ValueError, match="--min-residency must not be negative"):
        build_config(parse("--device", "sim", "--min-residency", "-1"))
