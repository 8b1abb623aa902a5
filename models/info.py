"""glimmer-info: parameters and true multiply-accumulates of a GlimmerNet / TakuNet.

glimmer-info CHECKPOINT | --arch glimmernet|takunet [--img-size 224] [--json]
"""

import argparse
import json
import sys
from typing import Any, Dict, List, Optional

from glimmer.runtime.core.console import add_verbose_flag, run_cli
from glimmer.runtime.core.errors import GlimmerError

COUNTED = (
    "true multiply-accumulates of every conv (each grouped dilated sub-conv included) and linear "
    "layer, plus the head's global average pool; BatchNorm, activations, 2x2 pooling, GRN and "
    "residual adds not counted; batch 1"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, prog="glimmer-info", description=__doc__.strip().splitlines()[0]
    )
    parser.add_argument("checkpoint", nargs="?", help="our .pt or a reference .ckpt")
    parser.add_argument(
        "--arch", choices=("glimmernet", "takunet"), help="a default architecture instead"
    )
    parser.add_argument(
        "--img-size",
        type=int,
        default=None,
        help="square input size (default: the checkpoint's, else 224)",
    )
    parser.add_argument("--num-classes", type=int, default=4, help="classes for --arch (default 4)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_verbose_flag(parser)
    return parser


def summarize(model, img_size: int) -> Dict[str, Any]:
    from .glimmernet import count_params
    from .macs import count_macs, paper_compatible_flops, params_per_part

    try:
        macs, macs_parts = count_macs(model, img_size)
    except RuntimeError as exc:
        raise GlimmerError(
            f"--img-size {img_size} does not survive the network's downsampling: "
            f"{str(exc).splitlines()[0]}"
        ) from None
    params_parts = params_per_part(model)
    return {
        "params": count_params(model),
        "macs": macs,
        "macs_counted": COUNTED,
        "paper_compatible_flops": paper_compatible_flops(model, img_size),
        "paper_compatible_note": "fvcore's count as the paper ran it: GDBlock convs skipped, "
        "BatchNorm counted; for comparison with the paper only",
        "img_size": img_size,
        "config": model.config.to_dict(),
        "parts": [
            {"part": k, "params": params_parts.get(k, 0), "macs": macs_parts.get(k, 0)}
            for k in dict.fromkeys(list(params_parts) + list(macs_parts))
        ],
    }


def format_table(info: Dict[str, Any], title: str) -> str:
    lines: List[str] = [
        title,
        "input {0}x{0}, config {1}".format(info["img_size"], info["config"]),
        "",
    ]
    lines.append("{:<10} {:>10} {:>14}".format("part", "params", "MACs"))
    for row in info["parts"]:
        lines.append("{:<10} {:>10,} {:>14,}".format(row["part"], row["params"], row["macs"]))
    lines.append("{:<10} {:>10,} {:>14,}".format("total", info["params"], info["macs"]))
    lines += [
        "",
        "MACs: " + info["macs_counted"] + ".",
        "Paper-compatible figure (fvcore as the paper ran it, GD convs skipped): {:,}".format(
            info["paper_compatible_flops"]
        ),
    ]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from .glimmernet import build_model

    if (args.checkpoint is None) == (args.arch is None):
        raise GlimmerError("give either CHECKPOINT or --arch")
    if args.checkpoint:
        from pathlib import Path

        from .checkpoint import load_checkpoint

        ck = load_checkpoint(Path(args.checkpoint))
        model, title, size = ck.model, f"{args.checkpoint} ({ck.arch})", ck.input_size[0]
    else:
        if args.num_classes < 1:
            raise GlimmerError("--num-classes must be at least 1")
        model, title, size = build_model(args.arch, num_classes=args.num_classes), args.arch, 224
    img_size = args.img_size or size
    if img_size < 16:
        raise GlimmerError(f"--img-size must be at least 16, got {img_size}")
    info = summarize(model, img_size)
    print(json.dumps(info) if args.json else format_table(info, title))
    return 0


def entry() -> None:
    sys.exit(run_cli("glimmer-info", main))


if __name__ == "__main__":
    entry()
