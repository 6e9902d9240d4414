"""The full inference benchmark, saved where the docs point: ``docs/benchmark/<name>.{txt,json,png}``.

Takes every option of ``pspnet benchmark`` (which does the measuring, see ``pspnet.benchmark``) and
adds what only a source checkout has: the peer models of ``benchmarks/peers.py`` (``--no-peers``
leaves them out), CamVid at ``../shared/datasets/camvid`` beside the checkout when ``--camvid`` is
not given, and where to save: the printed table as .txt, the whole result as .json, the chart as .png.

    python benchmarks/bench_inference.py                      # PSPNet-R50 473x473, all paths, peers, CamVid checks
    python benchmarks/bench_inference.py --compile --name cpu_compile
    python benchmarks/bench_inference.py --no-peers --no-scaling --no-slide --name quick
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pspnet.benchmark import format_table, plot, run_benchmark, write_json
from pspnet.cli import benchmark as cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmark"
PEERS = Path(__file__).resolve().with_name("peers.py")
CAMVID = ROOT.parent / "shared" / "datasets" / "camvid"  # the shared data beside a source checkout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Any other option goes to `pspnet benchmark` (see pspnet benchmark -h).")
    parser.add_argument("--out-dir", type=Path, default=DOCS)
    parser.add_argument("--name", default="cpu", help="file stem of the three outputs (default: cpu)")
    parser.add_argument("--no-peers", action="store_true", help=f"leave out the peer models of {PEERS.name}")
    own, rest = parser.parse_known_args(argv)
    bench_parser = argparse.ArgumentParser(prog="bench_inference.py")
    cli.add_parser(bench_parser.add_subparsers())
    args = bench_parser.parse_args(["benchmark", *rest])
    if not own.no_peers:
        args.cases.insert(0, str(PEERS))
    if args.camvid is None and CAMVID.is_dir():
        args.camvid = CAMVID
    cli.show_progress(args.quiet)
    result = run_benchmark(cli.config_from_args(args))
    table = format_table(result)
    print(table)
    own.out_dir.mkdir(parents=True, exist_ok=True)
    stem = own.out_dir / own.name
    stem.with_suffix(".txt").write_text(table + "\n")
    write_json(result, stem.with_suffix(".json"))
    plot(result, stem.with_suffix(".png"))
    print(f"wrote {stem}.txt, .json, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
