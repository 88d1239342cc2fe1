"""The regression check's power: realistic regressions, each a code change with the configuration left
equal, run through the check in a mutated copy of the code.

A mutation replaces one exact piece of source text by another in a copy of ``bench/``, ``dip/``,
``datasets/`` and ``reports/baselines/`` (and ``tests/``, see COPIED); ``python -m bench check`` then runs in that copy (its own
code, the real goldens) in a subprocess. The source text must occur exactly once, so a mutation whose
target has been edited away fails loudly instead of silently testing nothing.

Some regressions are below both parts' resolution, or on a path they never run (the deferred EMA update
of the steps between looks, a network flag the paper profile leaves at its default): a mutation names the
unit tests that catch it (``tests``), and those run in the mutated copy too, as a third part.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.data import REPO_ROOT
from bench.errors import BenchError, unknown_choice
from bench.provenance import cpu_kind, cpu_model, git_state
from bench.records import write_json_atomic, write_text_atomic


@dataclass(frozen=True)
class Mutation:
    name: str
    area: str  # what part of the recipe it touches
    path: str  # file, relative to the repository root
    old: str  # exact source text, found exactly once
    new: str
    story: str  # how such a change comes about
    # pytest node ids (tests/...) that fail on this mutation: unit tests that see what the check's parts
    # cannot. They run in the mutated copy as the part "tests"; the unmodified copy must pass them all.
    tests: tuple[str, ...] = ()


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
             'draw = torch.rand if spec.distribution == "uniform" else torch.randn',
             'draw = torch.randn if spec.distribution == "uniform" else torch.randn',
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
    # Below both parts' resolution, or where they never look: each caught by the unit tests it names.
    Mutation("ema-deferred-weights-swapped", "output average", "dip/restore.py",
             "self.loop.ema.lerp(out.detach(), 1.0 - self.config.ema_decay)",
             "self.loop.ema.lerp(out.detach(), self.config.ema_decay)",
             "the deferred twin of the EMA update (49 of every 50 steps; the fingerprint looks at every step) "
             "weights the new output by 0.99",
             tests=("tests/test_restore.py::test_the_ema_takes_every_step_on_the_deferred_path_too",
                    "tests/test_flag_effects.py::test_ema_decay_sets_the_moving_average")),
    Mutation("negative-slope-flag-ignored", "network flags", "dip/nets/blocks.py",
             "nn.LeakyReLU(config.negative_slope, inplace=True)", "nn.LeakyReLU(0.2, inplace=True)",
             "the paper's slope hard-coded: --negative-slope (and the seed recipe's 0.01) silently ignored",
             tests=("tests/test_flag_effects.py::test_a_network_flag_builds_what_it_says_and_changes_the_first_output"
                    "[net.negative_slope]",
                    "tests/test_flag_effects.py::test_negative_slope_computes_what_leaky_relus_of_that_slope_compute",
                    "tests/test_flag_effects.py::test_the_seed_recipe_builds_its_own_network")),
    Mutation("padding-flag-ignored", "network flags", "dip/nets/blocks.py",
             '    if config.padding == "reflection":\n', "    if config.padding:\n",
             "a truthiness test left from a boolean 'reflect' switch: --padding zeros reflect-pads all the same",
             tests=("tests/test_flag_effects.py::test_a_network_flag_builds_what_it_says_and_changes_the_first_output"
                    "[net.padding]",
                    "tests/test_flag_effects.py::test_zero_padding_computes_what_zero_padded_convolutions_compute")),
    Mutation("upsample-mode-flag-ignored", "network flags", "dip/nets/blocks.py",
             "return nn.Upsample(scale_factor=2, mode=config.upsample_mode, align_corners=align)",
             "return nn.Upsample(scale_factor=2, mode=\"bilinear\", align_corners=False)",
             "the paper's bilinear hard-coded: --upsample-mode (the ablations, the seed recipe's bicubic) ignored",
             tests=("tests/test_flag_effects.py::test_a_network_flag_builds_what_it_says_and_changes_the_first_output"
                    "[net.upsample_mode]",
                    "tests/test_flag_effects.py::test_upsample_mode_computes_what_upsampling_in_that_mode_computes",
                    "tests/test_flag_effects.py::test_the_seed_recipe_builds_its_own_network")),
    # Inside the outcome part's per-image tolerance, outside its parity comparison's (House's own effect).
    Mutation("fused-adam-eps", "fast path", "dip/trainer.py",
             "fused=config.fused_adam or None,", "fused=config.fused_adam or None, eps=1e-3 if config.fused_adam else 1e-8,",
             "the fused kernel (the fast path's) given eps 1e-3 'for low-precision stability': House loses ~2 dB at "
             "400 steps, inside the outcome part's 2.8 dB per image, outside its parity comparison's 0.93 dB"),
    Mutation("adam-beta2-0.99", "optimiser", "dip/trainer.py",
             "torch.optim.Adam(self.params, lr=config.lr,", "torch.optim.Adam(self.params, lr=config.lr, betas=(0.9, 0.99),",
             "Adam's second moment averaged over ~100 steps instead of ~1000: differs only once t >> 100",
             tests=("tests/test_restore.py::test_the_optimiser_is_torchs_adam_with_its_defaults",)),
    Mutation("adamw-weight-decay", "optimiser", "dip/trainer.py",
             "torch.optim.Adam(self.params, lr=config.lr,", "torch.optim.AdamW(self.params, lr=config.lr,",
             "AdamW with its default weight decay 0.01: shrinks weights by lr x 0.01 per step",
             tests=("tests/test_restore.py::test_the_optimiser_is_torchs_adam_with_its_defaults",)),
    Mutation("backtrack-threshold-doubled", "backtracking", "dip/restore.py",
             "psnr_masked - loop.kept_psnr < -config.backtrack_drop_db", "psnr_masked - loop.kept_psnr < -2 * config.backtrack_drop_db",
             "backtracking only after a 10 dB drop: acts only on a collapse, which short runs do not have",
             tests=("tests/test_restore.py::test_the_drop_threshold_is_five_db",
                    "tests/test_flag_effects.py::test_backtrack_drop_db_sets_the_threshold")),
)

# Regressions the check and the unit tests are known not to see, measured all the same (``make power``)
# so that the README's list of blind spots rests on numbers; no test requires them to be caught. (The
# three once here, Adam's beta2 and weight decay and the backtracking threshold, are caught by unit tests
# now: MUTATIONS.)
BLIND_SPOTS: tuple[Mutation, ...] = ()

# What a mutated copy holds: the code, the manifests, the goldens and the spread report (which sizes the
# outcome part's parity tolerance) for the check; the tests and their configuration for the unit tests.
COPIED = ("bench", "dip", "datasets", "reports/baselines", "tests", "pyproject.toml", "reports/regression-spread.json")


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
        if (REPO_ROOT / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, root / name)
        else:
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


def unit_tests_in(tree: Path, tests: tuple[str, ...], data_dir: Path) -> dict:
    """The unit tests ``tests`` (pytest node ids) with ``tree``'s code; {"exit": pytest's exit status, "result":
    {"ok", "failed": the node ids that failed, "named": how many node ids were given} or None, "error": the last line of
    pytest's output}. Only exit 0 (all passed) and 1 (some failed) are results: a node id that no longer exists
    (exit 4) or collects nothing (exit 5) is an error, never a catch."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=-ra --strict-markers", *tests]
    done = subprocess.run(command, cwd=tree, capture_output=True, text=True,
                          env={**os.environ, "DIP_DATA_DIR": str(data_dir)})
    lines = done.stdout.strip().splitlines() or [""]
    if done.returncode not in (0, 1):
        return {"exit": done.returncode, "result": None, "error": lines[-1]}
    failed = [line.split()[1] for line in lines if line.startswith("FAILED ")]
    return {"exit": done.returncode, "result": {"ok": done.returncode == 0, "failed": failed, "named": len(tests)},
            "error": ""}


def _caught(part: str, outcome: dict) -> bool:
    """Whether a part failed: a check that fails or cannot run (the mutated code broke it); tests that failed."""
    if part == "tests":
        return outcome["exit"] == 1
    return outcome["exit"] != 0


def measure_power(mutations: tuple[Mutation, ...], data_dir: Path, work_dir: Path, log=print) -> list[dict]:
    """Every mutation (and the unmodified code first) through both parts of the check, and through the unit
    tests it names (the unmodified code through all of those)."""
    rows = []
    every_test = tuple(dict.fromkeys(t for m in mutations for t in m.tests))
    for mutation in (None, *mutations):
        name = "unmodified" if mutation is None else mutation.name
        log(f"{name} ...")
        tree = mutated_tree(mutation, work_dir / "tree")
        parts = {part: check_in(tree, part, data_dir, work_dir / name) for part in ("fingerprint", "outcome")}
        tests = every_test if mutation is None else mutation.tests
        if tests:
            parts["tests"] = unit_tests_in(tree, tests, data_dir)
        # the unmodified code fails a part on any non-zero exit; a mutation is caught only by a real failure
        caught_by = [part for part, outcome in parts.items()
                     if (outcome["exit"] != 0 if mutation is None else _caught(part, outcome))]
        rows.append({"name": name, "area": "" if mutation is None else mutation.area,
                     "story": "" if mutation is None else mutation.story, "blind_spot": mutation in BLIND_SPOTS,
                     "parts": parts, "caught_by": caught_by, "caught": bool(caught_by) != (mutation is None)})
    return rows


def _cell(outcome: dict | None) -> str:
    if outcome is None:
        return "—"
    result = outcome["result"]
    if result is None:
        return f"error (exit {outcome['exit']}): {outcome['error']}"
    if "failed" in result:  # the unit tests
        return f"**caught**: {', '.join(n.split('::')[-1] for n in result['failed'])} failed" if not result["ok"] else \
            f"passes ({result['named']} named)"
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
        f"{'passes every part' if rows[0]['caught'] else 'FAILS'}",
        f"- Machine: {provenance['cpu_model']}{' (' + provenance['cpu_kind'] + ')' if 'cpu_kind' in provenance else ''}; commit {provenance['commit'][:12]}{'-dirty' if provenance['dirty'] else ''}; "
        f"{provenance['timestamp']}; per-mutation results in `regression-power.json`",
        "- Each mutation is a code change (bench/mutations.py) with the configuration left equal; the check ran on a "
        "copy of the code with the change applied, against the committed goldens.",
        "- Margin: the largest |Δ| over everything a part compares, in units of its tolerance (> 1x fails).",
        "- Unit tests: the tests a mutation names (bench/mutations.py, `tests`), run in the mutated copy; they catch "
        "what both parts cannot see (the unmodified code ran all of them); — : none named.",
        "",
    ]
    lines += _power_table([rows[0]] + suite)
    if blind:
        lines += ["", "## Known blind spots (measured; no test requires them to be caught)", ""]
        lines += _power_table(blind)
    return "\n".join(lines) + "\n"


def _power_table(rows: list[dict]) -> list[str]:
    lines = ["| mutation | area | the change | fingerprint | outcome | unit tests | what moved most (fingerprint) |",
             "|:--|:--|:--|:--|:--|:--|:--|"]
    for row in rows:
        fp = row["parts"]["fingerprint"]["result"]
        moved = (fp["worst"] if fp else "").replace("|", "/")
        lines.append(f"| `{row['name']}` | {row['area']} | {row['story']} | {_cell(row['parts']['fingerprint'])} | "
                     f"{_cell(row['parts']['outcome'])} | {_cell(row['parts'].get('tests'))} | {moved} |")
    return lines


def write_power(rows: list[dict], out: Path) -> None:
    provenance = {**git_state(), "cpu_model": cpu_model(), "cpu_kind": cpu_kind(),
                  "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    write_json_atomic(out.with_suffix(".json"), {"provenance": provenance, "mutations": rows})
    write_text_atomic(out, render_power(rows, provenance))
