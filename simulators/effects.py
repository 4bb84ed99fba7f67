"""What real ID01 data has and the compact simulator does not: one switch per effect.

`opmon simulate --effects` and the truth harness build an `Effects` from names; each effect
records its truth under ``/entry/truth`` (see `opmon.commands.simulate`):

* ``focused-beam``: broad anisotropic 3-D peak (`peak_shape.FOCUSED`);
* ``ring``: the same, ring-like from the zone plate's central stop (`peak_shape.FOCUSED_RING`);
* ``mixed-fronts``: depth-mixed two-peak pixels at phase fronts (`crystal`);
* ``powder-arcs``: spotty arcs of other grains at the imaged reflection's 2θ (`scene`);
* ``gradient``: a background 10× the compact one with a gradient across the detector;
* ``beam-drop``: the incident intensity drops by 30 % halfway through the map, the monitor
  (``/entry/instrument/monitor/data``) recording it;
* ``drift``: the sample drifts by up to 3 map pixels between eta scans (`drift`);
* ``maxipix``: the 516 × 516 Maxipix with its chip gaps (`instrument.maxipix_2x2`);
* ``hot-unmasked``: two hot pixels near the peak missing from the file's mask.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

from opmon.errors import ConfigError

NAMES = ("focused-beam", "ring", "mixed-fronts", "powder-arcs", "gradient", "beam-drop", "drift", "maxipix",
         "hot-unmasked")


@dataclass(frozen=True)
class Effects:
    """Switches (and sizes) of the realistic effects; all off is the compact simulator."""

    focused_beam: bool = False
    ring: bool = False
    mixed_fronts: bool = False
    powder_arcs: bool = False
    gradient: bool = False
    beam_drop: float = 0.0  # fractional drop of the incident intensity from the middle of the map on
    drift_px: float = 0.0  # largest sample drift between eta scans, map pixels
    maxipix: bool = False
    hot_unmasked: int = 0

    def names(self) -> list[str]:
        """The names of the effects that are on (for files and reports)."""
        return [n for n, f in zip(NAMES, fields(self)) if getattr(self, f.name)]


ON = {"focused-beam": dict(focused_beam=True), "ring": dict(ring=True), "mixed-fronts": dict(mixed_fronts=True),
      "powder-arcs": dict(powder_arcs=True), "gradient": dict(gradient=True), "beam-drop": dict(beam_drop=0.3),
      "drift": dict(drift_px=3.0), "maxipix": dict(maxipix=True), "hot-unmasked": dict(hot_unmasked=2)}


def parse_effects(spec: str) -> Effects:
    """``"none"``, ``"all"`` or a comma-separated list of `NAMES`."""
    spec = spec.strip()
    if spec in ("", "none"):
        return Effects()
    names = NAMES if spec == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    effects = Effects()
    for name in names:
        if name not in ON:
            raise ConfigError(f"--effects {spec!r}: unknown effect {name!r}; expected none, all or some of "
                              f"{', '.join(NAMES)}")
        effects = replace(effects, **ON[name])  # type: ignore[arg-type]
    return effects
