"""`ppllava convert`: a PPLLaVA checkpoint from a local base MLLM and its paired CLIP/SigLIP model."""

from __future__ import annotations

import json
from pathlib import Path

from . import options

# ppllava.model (and transformers) load only when the command runs, so `ppllava --help` stays fast


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help="build PPLLaVA from a base LLaVA model and its paired text tower",
                       description="Plug-and-play migration, no re-pretraining. Keeps the base's vision tower, projector "
                                   "and LLM; takes the text tower, visual projection and logit scale from the paired "
                                   "dual encoder; extends the text tower's positions (CLIP 77 -> 248, SigLIP 64 -> 196). "
                                   "Bases: llava_next (LLaVA-NeXT), llava_onevision (LLaVA-OneVision, LLaVA-Video). "
                                   "The authors' released PPLLaVA checkpoints (farewellthree/ppllava_weight) are "
                                   "recognised and converted with everything they trained (text tower, projections, "
                                   "BT-Adapter, image_newline); --text-tower is then the CLIP/SigLIP their config "
                                   "names (clip_weight), for its tokenizer and text config. "
                                   "Reads local folders only; nothing is downloaded.")
    p.add_argument("--base", required=True, help="folder of the base model (Hugging Face layout, e.g. a LLaVA-OneVision), "
                                                 "or of one of the authors' PPLLaVA checkpoints")
    p.add_argument("--text-tower", required=True,
                   help="folder of the paired dual encoder (CLIPModel for CLIP towers, SiglipModel for SigLIP)")
    p.add_argument("--out", required=True, help="folder to write the PPLLaVA checkpoint to")
    p.add_argument("--keep", type=int, default=None, help="text positions kept as pretrained (default: the paper's 20)")
    p.add_argument("--stretch", type=int, default=None, help="stretch of the positions beyond them (default: the paper's 4)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: the base's own dtype)")
    p.set_defaults(run=run)


def run(args) -> int:
    from ppllava.model import convert as conversion

    dtype = options.dtype(args) if args.dtype else None
    extension = {k: v for k, v in (("keep", args.keep), ("stretch", args.stretch)) if v is not None}
    config = conversion.convert(args.base, args.text_tower, args.out, dtype=dtype, **extension)
    family = config.tower_family().name
    print(f"wrote {args.out}: {family} towers, prompt positions {config.prompt_config.max_position_embeddings}, "
          f"LLM {config.text_config.model_type}, relevance scale {config.relevance_scale:.2f}")
    report = json.loads((Path(args.out) / conversion.REPORT).read_text(encoding="utf-8"))
    print(f"chat template: {report['chat_template']}, {report['content']} content")
    print(f"{report['summary']} (every tensor listed in {Path(args.out) / conversion.REPORT})")
    return 0
