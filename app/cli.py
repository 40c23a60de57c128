"""Command line: ``python -m app serve`` and ``python -m app check-config``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from app import __version__
from app.main import create_app
from app.products import ProductConfig, ProductsFileError, load_products, masked_view
from app.server import serve
from app.settings import Settings, settings_problems


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatbot-bridge", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("serve", help="run the HTTP service (BRIDGE_HOST, BRIDGE_PORT)")
    check = commands.add_parser("check-config", help="validate the products file")
    check.add_argument(
        "--file",
        type=Path,
        default=None,
        help="products file to check (default: BRIDGE_PRODUCTS_FILE or config/products.toml)",
    )
    return parser


def _serve(settings: Settings) -> int:
    # One process, one worker: replicas scale out as separate containers over one Redis.
    serve(create_app(settings), host=settings.host, port=settings.port, settings=settings)
    return 0


def _print_problems(where: str, problems: list[str]) -> None:
    noun = "problem" if len(problems) == 1 else "problems"
    print(f"error: {len(problems)} {noun} in {where}:", file=sys.stderr)
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)


def _print_product(product: ProductConfig) -> None:
    print(f"{product.id}: platform={product.platform}")
    print(json.dumps(masked_view(product), indent=2))


def _check_config(path: Path) -> int:
    try:
        products = load_products(path)
    except ProductsFileError as exc:
        _print_problems(str(path), exc.problems)
        return 1
    for product in products.values():
        _print_product(product)
    print(f"ok: {path} defines {len(products)} product(s)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m app`` and the ``chatbot-bridge`` script; returns the exit code."""
    args = _build_parser().parse_args(argv)
    if args.command == "check-config" and args.file is not None:
        return _check_config(args.file)
    try:
        settings = Settings()
    except ValidationError as exc:
        _print_problems("the BRIDGE_* environment", settings_problems(exc))
        return 1
    if args.command == "serve":
        return _serve(settings)
    return _check_config(settings.products_file)
