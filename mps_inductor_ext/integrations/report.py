"""What patch() did: every site it replaced and every site it recognized but left alone, with why."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Site:
    """One place in a model: a module path (or a modeling module's function), what it is, and a detail
    (the op it now calls, or the reason it was left alone)."""

    name: str
    kind: str  # "rms_norm", "layer_norm", "rope" or "attention"
    detail: str


@dataclass
class PatchReport:
    """The result of `mps_inductor_ext.patch(model)`; `str(report)` prints it as a table."""

    patched: list[Site] = field(default_factory=list)
    skipped: list[Site] = field(default_factory=list)

    def count(self, kind: str) -> int:
        """How many sites of `kind` were patched."""
        return sum(site.kind == kind for site in self.patched)

    def names(self, kind: str) -> list[str]:
        return [site.name for site in self.patched if site.kind == kind]

    def __str__(self) -> str:
        lines = [f"patched {len(self.patched)} site(s), left {len(self.skipped)} alone"]
        lines += [f"  patched  {s.kind:<10} {s.name}: {s.detail}" for s in self.patched]
        lines += [f"  left     {s.kind:<10} {s.name}: {s.detail}" for s in self.skipped]
        return "\n".join(lines)
