"""`ppllava align`: contrastive alignment of a CLIP text tower (and the patch projection used for the
relevance map) to a frozen vision tower that has no paired text tower (InternViT of InternVL3).

    losses   CLIP's InfoNCE and SigLIP's sigmoid loss, gathered across processes (as open_clip's)
    pairs    image-text pairs from a .jsonl/.tsv list or a folder of tar shards
    vision   the frozen InternViT, read from an InternVL checkpoint
    config   AlignConfig: the recipe (configs/align/*.yaml) and key=value overrides
    loop     the DeepSpeed loop (the training stack's checkpoints, metrics and stream), retrieval check
The result, `<output_dir>/text_tower/`, is the text tower folder `ppllava convert` takes with an InternVL base.
Nothing here is imported by ppllava.model except the losses (a leaf module).
"""
