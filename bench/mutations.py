"""The regression check's power: realistic regressions, each a code change with the configuration left
equal, run through the check in a mutated copy of the code.

A mutation replaces one exact piece of source text by another in a copy of ``bench/``, ``dip/``,
``datasets/`` and ``reports/baselines/``; ``python -m bench check`` then runs in that copy (its own
code, the real goldens) in a subprocess. The source text must occur exactly once, so a mutation whose
target has been edited away fails loudly instead of silently testing nothing.
"""

from __future__ import annotations

import datetime
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.data import REPO_ROOT
from bench.errors import BenchError, unknown_choice
from bench.provenance import cpu_model, git_state
from bench.records import write_json_atomic, write_text_atomic


@dataclass(frozen=True)
class Mutation:
    name: str
    area: str  # what part of the recipe it touches
    path: str  # file, relative to the repository root
    old: str  # exact source text, found exactly once
    new: str
    story: str  # how such a change comes about


MUTATIONS = (
    Mutation("adam-gan-betas", "optimiser", "dip/trainer.py",
             "torch.optim.Adam(self.params, lr=config.lr,", "torch.optim.Adam(self.params, lr=config.lr, betas=(0.5, 0.999),",
             "Adam's betas copied from GAN code (beta1 0.5 instead of the default 0.9)"),
    Mutation("gradients-accumulate", "optimiser", "dip/trainer.py",
             "        self.next_input()\n        self.optimizer.zero_grad(set_to_none=True)\n",
             "        self.next_input()\n",
             "zero_grad dropped in a refactor of the step: gradients add up across iterations"),
    Mutation("leaky-relu-default-slope", "activation", "dip/nets/blocks.py",
             "nn.LeakyReLU(config.negative_slope, inplace=True)", "nn.LeakyReLU(inplace=True)",
             "the configured slope 0.2 not passed on: PyTorch's default 0.01 runs instead"),
    Mutation("merge-batchnorm-dropped", "normalisation", "dip/nets/blocks.py",
             "        nn.BatchNorm2d(c_in),\n", "        nn.Identity(),\n",
             "the BatchNorm on the concatenated skip and deeper features removed as 'redundant'"),
    Mutation("upsample-align-corners", "upsampling", "dip/nets/blocks.py",
             'align = None if config.upsample_mode == "nearest" else False',
             'align = None if config.upsample_mode == "nearest" else True',
             "bilinear upsampling with align_corners=True (a different interpolation grid)"),
    Mutation("replication-padding", "padding", "dip/nets/blocks.py",
             "class ReflectionPad(nn.ReflectionPad2d):", "class ReflectionPad(nn.ReplicationPad2d):",
             "edge replication instead of reflection at the borders of every 3x3 convolution"),
    Mutation("input-gaussian", "input scale", "dip/trainer.py",
             "z = torch.rand(1, config.net.in_channels, height, width) * config.input_scale",
             "z = torch.randn(1, config.net.in_channels, height, width) * config.input_scale",
             "the input drawn from N(0, 0.1^2) instead of 0.1 * U[0, 1) (rand -> randn)"),
    Mutation("input-noise-drawn-once", "input noise", "dip/trainer.py",
             '        if self.config.input_noise == "fixed":\n            self.noise_buffer.normal_(generator=self.noise_gen)\n',
             '        if self.config.input_noise == "fixed":\n            if self.steps == 0:\n'
             '                self.noise_buffer.normal_(generator=self.noise_gen)\n',
             "the perturbation drawn once and reused (an 'optimisation'): no fresh noise per step"),
    Mutation("loss-over-observed-pixels", "loss", "dip/trainer.py",
             "loss = F.mse_loss(out * self.mask, self.x_masked)",
             "loss = F.mse_loss(out * self.mask, self.x_masked, reduction='sum') / self.mask.sum()",
             "the MSE averaged over the observed pixels only, not over all pixels"),
    Mutation("mask-shared-by-images", "mask", "dip/masks.py",
             'derived_seed(seed, f"mask/{name}")', 'derived_seed(seed, "mask")',
             "the mask seeded by the seed alone: every image of a seed gets the same mask"),
    Mutation("final-output-eval-mode", "final output", "dip/trainer.py",
             "return self.net(self.net_input).float()", "return self.net.eval()(self.net_input).float()",
             "the final image computed in eval mode (BatchNorm's running statistics), the usual inference habit"),
    Mutation("psnr-of-8-bit-output", "PSNR", "dip/metrics.py",
             "    estimate = np.asarray(estimate, dtype=np.float64)\n",
             "    estimate = np.round(np.asarray(estimate, dtype=np.float64) * 255) / 255\n",
             "the estimate rounded to 8 bits before scoring (as if read back from a saved PNG)"),
    Mutation("gray-divided-by-256", "data loading", "bench/data.py",
             "return np.asarray(image, dtype=np.float32) / 255.0\n    except",
             "return np.asarray(image, dtype=np.float32) / 256.0\n    except",
             "8-bit images scaled by 1/256 instead of 1/255 (white becomes 0.996)"),
    Mutation("ema-weights-swapped", "output average", "dip/restore.py",
             "loop.ema.lerp_(o, 1.0 - config.ema_decay)", "loop.ema.lerp_(o, config.ema_decay)",
             "the moving average weights the new output by 0.99 instead of 0.01"),
)

# Regressions the check is known not to see, measured all the same (``make power``) so that the README's
# list of blind spots rests on numbers; no test requires them to be caught.
BLIND_SPOTS = (
    Mutation("adam-beta2-0.99", "optimiser", "dip/trainer.py",
             "torch.optim.Adam(self.params, lr=config.lr,", "torch.optim.Adam(self.params, lr=config.lr, betas=(0.9, 0.99),",
             "Adam's second moment averaged over ~100 steps instead of ~1000: differs only once t >> 100"),
    Mutation("adamw-weight-decay", "optimiser", "dip/trainer.py",
             "torch.optim.Adam(self.params, lr=config.lr,", "torch.optim.AdamW(self.params, lr=config.lr,",
             "AdamW with its default weight decay 0.01: shrinks weights by lr x 0.01 per step"),
    Mutation("backtrack-threshold-doubled", "backtracking", "dip/restore.py",
             "psnr_masked - loop.kept_psnr < -config.backtrack_drop_db", "psnr_masked - loop.kept_psnr < -2 * config.backtrack_drop_db",
             "backtracking only after a 10 dB drop: acts only on a collapse, which short runs do not have"),
)

COPIED = ("bench", "dip", "datasets", "reports/baselines")


def select_mutations(names: tuple[str, ...] | None) -> tuple[Mutation, ...]:
    """The named mutations (blind spots included), or every one: MUTATIONS, then BLIND_SPOTS."""
    if names is None:
        return MUTATIONS + BLIND_SPOTS
    known = {m.name: m for m in MUTATIONS + BLIND_SPOTS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise BenchError(unknown_choice("unknown mutation", unknown[0], known))
    return tuple(known[n] for n in names)


def mutated_tree(mutation: Mutation | None, root: Path) -> Path:
    """A copy of the code, goldens and manifests under ``root`` with ``mutation`` applied (None: unmodified)."""
    shutil.rmtree(root, ignore_errors=True)
    for name in COPIED:
        shutil.copytree(REPO_ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "cache"))
    if mutation is not None:
        target = root / mutation.path
        text = target.read_text(encoding="utf-8")
        if text.count(mutation.old) != 1:
            raise BenchError(f"mutation {mutation.name}: its source text occurs {text.count(mutation.old)} times in "
                             f"{mutation.path}, not once; update bench/mutations.py")
        target.write_text(text.replace(mutation.old, mutation.new), encoding="utf-8")
    return root


def check_in(tree: Path, part: str, data_dir: Path, work_dir: Path) -> dict:
    """``python -m bench check --part PART`` with ``tree``'s code; {"exit": code, "result": PartResult dict or None,
    "error": last stderr line}."""
    out = work_dir / f"{part}.json"
    out.unlink(missing_ok=True)
    command = [sys.executable, "-m", "bench", "check", "--part", part, "--json", str(out), "--work-dir", str(work_dir),
               "--data-dir", str(data_dir)]
    done = subprocess.run(command, cwd=tree, capture_output=True, text=True)
    result = json.loads(out.read_text())["results"][0] if out.exists() else None
    error = (done.stderr.strip().splitlines() or [""])[-1] if done.returncode not in (0, 1) else ""
    return {"exit": done.returncode, "result": result, "error": error}


def measure_power(mutations: tuple[Mutation, ...], data_dir: Path, work_dir: Path, log=print) -> list[dict]:
    """Every mutation (and the unmodified code first) through both parts of the check."""
    rows = []
    for mutation in (None, *mutations):
        name = "unmodified" if mutation is None else mutation.name
        log(f"{name} ...")
        tree = mutated_tree(mutation, work_dir / "tree")
        parts = {part: check_in(tree, part, data_dir, work_dir / name) for part in ("fingerprint", "outcome")}
        caught_by = [part for part, outcome in parts.items() if outcome["exit"] != 0]
        rows.append({"name": name, "area": "" if mutation is None else mutation.area,
                     "story": "" if mutation is None else mutation.story, "blind_spot": mutation in BLIND_SPOTS,
                     "parts": parts, "caught_by": caught_by, "caught": bool(caught_by) != (mutation is None)})
    return rows


def _cell(outcome: dict) -> str:
    result = outcome["result"]
    if result is None:
        return f"error (exit {outcome['exit']}): {outcome['error']}"
    verdict = "**caught**" if not result["ok"] else "passes"
    margin = "∞" if result["margin"] is None else f"{result['margin']:.3g}x"
    return f"{verdict}, {margin}"


def render_power(rows: list[dict], provenance: dict) -> str:
    suite = [r for r in rows if r["name"] != "unmodified" and not r["blind_spot"]]
    blind = [r for r in rows if r["blind_spot"]]
    lines = [
        "# Regression check: power against realistic regressions",
        "",
        f"- {sum(r['caught'] for r in suite)} of {len(suite)} mutations caught; the unmodified code "
        f"{'passes both parts' if rows[0]['caught'] else 'FAILS'}",
        f"- Machine: {provenance['cpu_model']}; commit {provenance['commit'][:12]}{'-dirty' if provenance['dirty'] else ''}; "
        f"{provenance['timestamp']}; per-mutation results in `regression-power.json`",
        "- Each mutation is a code change (bench/mutations.py) with the configuration left equal; the check ran on a "
        "copy of the code with the change applied, against the committed goldens.",
        "- Margin: the largest |Δ| over everything a part compares, in units of its tolerance (> 1x fails).",
        "",
    ]
    lines += _power_table([rows[0]] + suite)
    if blind:
        lines += ["", "## Known blind spots (measured; no test requires them to be caught)", ""]
        lines += _power_table(blind)
    return "\n".join(lines) + "\n"


def _power_table(rows: list[dict]) -> list[str]:
    lines = ["| mutation | area | the change | fingerprint | outcome | what moved most (fingerprint) |",
             "|:--|:--|:--|:--|:--|:--|"]
    for row in rows:
        fp = row["parts"]["fingerprint"]["result"]
        moved = (fp["worst"] if fp else "").replace("|", "/")
        lines.append(f"| `{row['name']}` | {row['area']} | {row['story']} | {_cell(row['parts']['fingerprint'])} | "
                     f"{_cell(row['parts']['outcome'])} | {moved} |")
    return lines


def write_power(rows: list[dict], out: Path) -> None:
    provenance = {**git_state(), "cpu_model": cpu_model(),
                  "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    write_json_atomic(out.with_suffix(".json"), {"provenance": provenance, "mutations": rows})
    write_text_atomic(out, render_power(rows, provenance))
