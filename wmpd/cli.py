"""Command-line interface: the only place that prints for humans or decides exit codes."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from wmpd import __version__
from wmpd.errors import ConfigError, QueryError, WmpdError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130

logger = logging.getLogger("wmpd")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wmpd", description="Where's My Pic: local, offline semantic image search."
    )
    parser.add_argument("--version", action="version", version=f"wmpd {__version__}")
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default: $WMPD_CONFIG, else the platform's config dir)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the daemon in the foreground (watch, index, serve)")
    run.set_defaults(handler=cmd_run)

    index = commands.add_parser("index", help="index the configured folders once, then exit")
    index.add_argument("--json", action="store_true", help="print the counts as JSON")
    index.set_defaults(handler=cmd_index)

    search = commands.add_parser("search", help="search by description or by example image")
    search.add_argument("query", nargs="?", default="", help='e.g. "a dog running on grass"')
    search.add_argument("--image", metavar="PATH", help="find pictures similar to this one")
    search.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    search.add_argument("--offset", type=int, default=0, help="skip this many results")
    search.add_argument("--folder", help="only results under this folder")
    search.add_argument("--json", action="store_true", help="print results as JSON")
    search.add_argument(
        "--local",
        action="store_true",
        help="do not ask a running daemon; load the index in this process",
    )
    search.set_defaults(handler=cmd_search)

    status = commands.add_parser("status", help="what is indexed, what failed, what runs")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(handler=cmd_status)

    open_cmd = commands.add_parser("open", help="open a search result by its id")
    open_cmd.add_argument("id", type=int)
    open_cmd.set_defaults(handler=cmd_open)

    repair = commands.add_parser("repair", help="check the catalog; move a corrupt one aside")
    repair.set_defaults(handler=cmd_repair)

    config = commands.add_parser("config", help="check or create the config file")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = config_commands.add_parser("check", help="validate a config file")
    check.add_argument("path", nargs="?", help="file to check (default: the active config)")
    check.set_defaults(handler=cmd_config_check)
    init = config_commands.add_parser("init", help="write a commented starter config")
    init.add_argument("path", nargs="?", help="where to write it (default: the active config path)")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(handler=cmd_config_init)
    show = config_commands.add_parser("show", help="print the effective config with defaults")
    show.set_defaults(handler=cmd_config_show)

    _add_service_commands(commands)
    return parser


def _add_service_commands(commands: Any) -> None:
    service = commands.add_parser("service", help="install wmpd as a systemd/launchd user service")
    actions = service.add_subparsers(dest="service_command", required=True, metavar="ACTION")
    for name, help_text in (
        ("install", "write the unit/agent file and start it"),
        ("uninstall", "stop the service and remove its file"),
        ("status", "show the service manager's view"),
        ("logs", "follow the service's log"),
    ):
        action = actions.add_parser(name, help=help_text)
        action.add_argument("--dry-run", action="store_true", help="print, change nothing")
        action.set_defaults(handler=cmd_service)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"wmpd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except QueryError as exc:
        print(f"wmpd: invalid {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except WmpdError as exc:
        print(f"wmpd: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("wmpd: interrupted; everything committed so far is kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    except sqlite3.DatabaseError as exc:
        # Damage deep in the catalog file surfaces only when its pages are read.
        print(
            f"wmpd: the catalog is damaged ({exc}); stop wmpd and run `wmpd repair` "
            f"(your photos are not touched)",
            file=sys.stderr,
        )
        return EXIT_ERROR


def _configure_logging(level: int) -> None:
    # Our own logger speaks at the chosen level; libraries (open_clip logs every step of a
    # model load at INFO on the root logger, faiss its loader) only when something is wrong.
    logging.basicConfig(
        level=logging.WARNING if level > logging.DEBUG else logging.DEBUG,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("wmpd").setLevel(level)


def _load_config(args: argparse.Namespace) -> Any:
    from wmpd.config import load_config
    from wmpd.paths import resolve_config_path

    config = load_config(resolve_config_path(args.config))
    if not args.verbose:
        logging.getLogger("wmpd").setLevel(config.logging.level)
    return config


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


# -- commands ------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from wmpd.daemon import run_daemon
    from wmpd.paths import resolve_config_path

    return run_daemon(resolve_config_path(args.config), verbose=args.verbose)


def cmd_index(args: argparse.Namespace) -> int:
    from wmpd.library import run_index

    config = _load_config(args)
    bar = _ProgressBar(enabled=not args.json and sys.stderr.isatty())
    try:
        result = run_index(config, on_plan=bar.start, on_progress=bar.advance)
    finally:
        bar.close()
    counts = {
        "added": result.stats.added,
        "moved": result.stats.moved,
        "removed": result.stats.removed,
        "unchanged": result.stats.unchanged,
        "failed": result.stats.failed,
        "embedded": result.stats.embedded,
    }
    if args.json:
        _print_json({**counts, "offline": result.offline, "seconds": round(result.seconds, 2)})
    else:
        summary = ", ".join(f"{value} {name}" for name, value in counts.items())
        rate = result.stats.embedded / result.seconds if result.seconds else 0.0
        print(f"indexed in {result.seconds:.1f}s ({rate:.1f} images/s embedded): {summary}")
        for root, reason in result.offline.items():
            print(f"  offline, left as it was: {root}: {reason}")
        if result.stats.failed:
            print("  see `wmpd status` for the files that could not be read")
        print('search with: wmpd search "a dog on grass"')
    return EXIT_OK


class _ProgressBar:
    """A tqdm bar on a terminal; nothing otherwise."""

    def __init__(self, enabled: bool) -> None:
        self._enabled = enabled
        self._bar: Any = None

    def start(self, total: int) -> None:
        if self._enabled and total:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="img", desc="indexing", dynamic_ncols=True)

    def advance(self, count: int) -> None:
        if self._bar is not None:
            self._bar.update(count)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def cmd_search(args: argparse.Namespace) -> int:
    from wmpd.search import Filters

    config = _load_config(args)
    if not args.query and not args.image:
        raise QueryError("query", 'give a description (wmpd search "a dog") or --image PATH')
    # Read the example picture first: a wrong path is reported before a model is loaded,
    # and the same way whether a daemon answers or not.
    image = _read_query_image(args.image) if args.image else None
    filters = Filters(folder=str(Path(args.folder).expanduser().resolve()) if args.folder else None)
    page = None if args.local else _search_via_daemon(config, args, image, filters)
    if page is None:
        page = _search_locally(config, args, image, filters)
    if args.json:
        _print_json(page)
        return EXIT_OK
    if not page["results"]:
        print("no results (is anything indexed? see `wmpd status`)")
    for hit in page["results"]:
        print(f"{hit['score']:.3f}  {hit['path']}  [id {hit['id']}]")
    return EXIT_OK


def _read_query_image(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise QueryError("--image", f"cannot read {path}: {exc.strerror}") from exc


def _search_via_daemon(
    config: Any, args: argparse.Namespace, image: bytes | None, filters: Any
) -> dict[str, Any] | None:
    from wmpd.client import DaemonClient

    client = DaemonClient.for_config(config)
    if not client.is_up():
        return None
    # The daemon gets the folder resolved here: its working directory is not ours.
    if image is not None:
        return client.search_image(image, args.query, args.k, args.offset, filters.folder)
    return client.search_text(args.query, args.k, args.offset, filters.folder)


def _search_locally(
    config: Any, args: argparse.Namespace, image: bytes | None, filters: Any
) -> dict[str, Any]:
    from wmpd.library import open_local_search

    local = open_local_search(config)
    try:
        searcher = local.searcher
        vector = None
        if image is not None:
            vector = searcher.image_vector_from_bytes(image, args.image)
        if args.query:
            text_vector = searcher.text_vector(args.query, "query")
            vector = text_vector if vector is None else vector + text_vector
        assert vector is not None
        page = searcher.search(
            vector / max(float((vector**2).sum()) ** 0.5, 1e-9),
            k=args.k,
            offset=args.offset,
            filters=filters,
        )
        return page.to_json()
    finally:
        local.close()


def cmd_status(args: argparse.Namespace) -> int:
    from wmpd.client import DaemonClient
    from wmpd.library import catalog_status

    config = _load_config(args)
    status = DaemonClient.for_config(config).status()
    if status is None:
        status = catalog_status(config)
    if args.json:
        _print_json(status)
    else:
        _print_status(status)
    return EXIT_OK


def _print_status(status: dict[str, Any]) -> None:
    print(f"state:    {status.get('state')}")
    if status.get("state_detail"):
        print(f"          {status['state_detail']}")
    print(f"images:   {status.get('images', 0)} ({status.get('paths', 0)} paths)")
    progress = status.get("progress") or {}
    if progress.get("total"):
        print(
            f"progress: {progress.get('done', 0)}/{progress['total']}, queue "
            f"{status.get('queue', 0)}, {progress.get('rate', 0):.1f} images/s, "
            f"ETA {progress.get('eta_seconds') or '?'}s"
        )
    print(f"model:    {status.get('model_id')}")
    consistent = "yes" if status.get("index_consistent") else "no (rebuilt at next start)"
    print(f"index:    {status.get('index_size', 0)} vectors, matches catalog: {consistent}")
    if status.get("writer") and status.get("state") == "stopped":
        print(f"writer:   {status['writer']}")
    print(f"failed:   {status.get('failed', 0)}")
    for reason, count in sorted((status.get("failures") or {}).items()):
        print(f"          {count} {reason}")
    for root in status.get("roots", []):
        detail = f" ({root['detail']})" if root.get("detail") else ""
        print(f"root:     {root['state']:<8} {root['path']}{detail}")
    for warning in status.get("warnings", []):
        print(f"warning:  {warning}")


def cmd_open(args: argparse.Namespace) -> int:
    import subprocess

    from wmpd.catalog import Catalog
    from wmpd.datadir import DataDir

    config = _load_config(args)
    catalog = Catalog(DataDir(config.index.data_dir).catalog_path, readonly=True)
    try:
        paths = catalog.paths_of_image(args.id)
    finally:
        catalog.close()
    if not paths:
        raise WmpdError(f"no image with id {args.id}; ids come from `wmpd search`")
    opener = "open" if sys.platform == "darwin" else "xdg-open"
    try:
        subprocess.Popen([opener, paths[0]], start_new_session=True)
    except FileNotFoundError:
        raise WmpdError(f"`{opener}` is not installed; the file is {paths[0]}") from None
    print(paths[0])
    return EXIT_OK


def cmd_repair(args: argparse.Namespace) -> int:
    from wmpd.repair import repair_data_dir

    config = _load_config(args)
    for line in repair_data_dir(config.index.data_dir):
        print(line)
    return EXIT_OK


def cmd_config_check(args: argparse.Namespace) -> int:
    from wmpd.config import load_config
    from wmpd.paths import resolve_config_path

    path = Path(args.path) if args.path else resolve_config_path(args.config)
    load_config(path)
    print("ok")
    return EXIT_OK


def cmd_config_init(args: argparse.Namespace) -> int:
    from wmpd.config import write_starter_config
    from wmpd.paths import resolve_config_path

    path = Path(args.path) if args.path else resolve_config_path(args.config)
    written = write_starter_config(path, force=args.force)
    print(f"wrote {written}; edit `folders:` to point at your photos, then run `wmpd run`")
    return EXIT_OK


def cmd_config_show(args: argparse.Namespace) -> int:
    from wmpd.config import dump_config

    print(dump_config(_load_config(args)), end="")
    return EXIT_OK


def cmd_service(args: argparse.Namespace) -> int:
    from wmpd import service
    from wmpd.paths import resolve_config_path

    action = args.service_command
    if action == "install":
        config = _load_config(args)
        plan = service.plan_install(resolve_config_path(args.config), config.index.data_dir)
        lines = service.install(plan, dry_run=args.dry_run)
    elif action == "uninstall":
        lines = service.uninstall(dry_run=args.dry_run)
    elif action == "status":
        lines = [service.service_status()]
    else:
        command = service.service_logs_command()
        if args.dry_run:
            lines = [" ".join(command)]
        else:
            os.execvp(command[0], command)
    for line in lines:
        print(line)
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
