"""Where every source tensor of a conversion goes: rules as data, applied by name, reported in full.

A rule takes the tensors of one source ("base" or "text tower") whose names (as transformers loads
them) start with `prefix`, and either writes them under `target` (the prefix replaced), or drops them
for the reason it names. The first matching rule wins, so a narrow rule goes before a broad one.
A tensor no rule covers is an error that names it: nothing is dropped without a reason on record.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Rule:
    prefix: str
    target: str | None      # output name prefix; None: not written as a tensor
    why: str                # printed and written to conversion.json
    config: str | None = None   # the PPLLaVAConfig field the tensor's value goes to instead
    part: tuple[int, int] | None = None   # (i, n): only the i-th of n equal blocks of rows is written

    def matches(self, name: str) -> bool:
        return name == self.prefix or (self.prefix.endswith(".") and name.startswith(self.prefix))


class UnmappedTensor(ValueError):
    pass


class Ledger:
    """The output state dict and one row per source tensor: what it became and by which rule."""

    def __init__(self):
        self.state: dict[str, torch.Tensor] = {}
        self.rows: list[dict] = []

    def apply(self, source: str, tensors: dict[str, torch.Tensor], rules: tuple[Rule, ...]) -> None:
        unmapped = []
        for name, tensor in tensors.items():
            rule = next((r for r in rules if r.matches(name)), None)
            if rule is None:
                unmapped.append(name)
                continue
            row = {"source": source, "name": name, "shape": list(tensor.shape),
                   "dtype": str(tensor.dtype).removeprefix("torch."), "rule": rule.why}
            if rule.target is not None:
                target = rule.target + name[len(rule.prefix):]
                if target in self.state:
                    raise UnmappedTensor(f"{source} tensors {name!r} and another both map to {target!r}")
                if rule.part is not None:
                    i, n = rule.part
                    if tensor.shape[0] % n:
                        raise UnmappedTensor(f"{source} tensor {name!r} of {list(tensor.shape)} does not split in {n}")
                    tensor = tensor.chunk(n)[i]
                self.state[target] = tensor.detach()
                row["to"] = target
            elif rule.config is not None:
                row["config"] = rule.config
            else:
                row["dropped"] = True
            self.rows.append(row)
        if unmapped:
            more = f" and {len(unmapped) - 3} more" if len(unmapped) > 3 else ""
            raise UnmappedTensor(f"{source} tensor(s) {', '.join(map(repr, unmapped[:3]))}{more} are covered by no "
                                 f"conversion rule: this is not a layout convert knows (nothing was written)")

    def merge(self, source: str, names: list[str], target: str, tensor: torch.Tensor, what: str) -> None:
        """Write one tensor made of several source tensors (their rows say so) under `target`."""
        if target in self.state:
            raise UnmappedTensor(f"{source} tensors {names} and another both map to {target!r}")
        self.state[target] = tensor.detach()
        for row in self.rows:
            if row["source"] == source and row["name"] in names:
                row.pop("dropped", None)
                row["to"], row["rule"] = target, f"{row['rule']}; {what}"

    def note(self, source: str, name: str, what: str) -> None:
        """Record what happened to an already mapped tensor (e.g. its position table was extended)."""
        for row in self.rows:
            if row["source"] == source and row["name"] == name:
                row["rule"] += f"; {what}"
                return
        raise KeyError(name)

    def summary(self) -> str:
        kept, configured = sum("to" in r for r in self.rows), sum("config" in r for r in self.rows)
        drops = Counter(r["rule"] for r in self.rows if r.get("dropped"))
        dropped = "; ".join(f"{n} x {why}" for why, n in drops.items())
        return (f"{len(self.rows)} source tensors: {kept} written, {configured} into the config"
                + (f", dropped by rule: {dropped}" if drops else ""))
