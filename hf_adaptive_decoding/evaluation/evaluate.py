"""Evaluate decoders (static actions, MIXED, EDT, learned adapters) on the same prompts, seeds and budgets, and
report Pass@k with confidence intervals (the paper's Tables 1 and 5)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..adapters.configuration import AdaptiveDecodingConfig, DecodingAction
from ..adapters.modeling import AutoDecodingAdapter, DecodingAdapterModel
from ..adapters.shipped import resolve_adapter
from ..generation.policies import ConstantPolicy, DecodingPolicy, EntropyDynamicTemperatureLogitsWarper
from ..rewards.scoring import reward_function_name
from ..training.objectives import pass_at_k
from .comparison import half_width, set_reference
from .runner import rollout_and_score

# Outcomes cached by an older sampler are not reused: the same seed draws other numbers.
SAMPLING = "keyed inverse-CDF per (seed, problem, sample, position)"


@dataclass
class Decoder:
    """
    One way of decoding, as [`evaluate_decoders`] runs it: a policy (a trained adapter or a [`ConstantPolicy`]), its
    decision mode, and an optional logits processor applied first (EDT). Build one with the class methods, or from a
    compact spec with [`Decoder.from_spec`].
    """

    name: str
    policy: DecodingAdapterModel | DecodingPolicy
    description: str
    deterministic: bool = False
    logits_processor: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def level(self) -> str:
        return self.policy.level

    @property
    def budget_aware(self) -> bool:
        """A sequence-level adapter told the parallel budget: its decision depends on `B`, so each Pass@k is
        measured with `B = k`."""
        return (
            isinstance(self.policy, DecodingAdapterModel)
            and self.level == "sequence"
            and (self.policy.budget_feature is not None)
        )

    @property
    def uses_budget(self) -> bool:
        """An adapter whose features include a budget: the parallel budget `B` (sequence level) or the remaining
        tokens `b_t` (token level)."""
        return isinstance(self.policy, DecodingAdapterModel) and self.policy.budget_feature is not None

    @property
    def samples_identical(self) -> bool:
        """Greedy decoding: every sample of a prompt is the same, so one is generated and stands for all."""
        actions = self.policy.decoding_config.actions
        return isinstance(self.policy, ConstantPolicy) and len(actions) == 1 and not actions[0].do_sample

    @classmethod
    def static(cls, name: str, action: DecodingAction | str) -> Decoder:
        action = DecodingAction.from_name(action) if isinstance(action, str) else action
        # Token level (the same samples as a sequence-level decision) so that per-token entropies are recorded.
        return cls(name, ConstantPolicy.static(action, level="token"), f"static {action.name}")

    @classmethod
    def mixed(cls, name: str, actions: AdaptiveDecodingConfig | str) -> Decoder:
        config = AdaptiveDecodingConfig.coerce(actions)
        description = f"uniform over {config.action_names} ({config.level} level)"
        return cls(name, ConstantPolicy.mixed(config.actions, level=config.level), description)

    @classmethod
    def edt(cls, name: str, temperature: float = 1.0, base: float = 0.8, theta: float = 1.0) -> Decoder:
        warper = EntropyDynamicTemperatureLogitsWarper(temperature, base, theta)
        policy = ConstantPolicy.static(DecodingAction(temperature=1.0), level="token")
        description = f"EDT T0={temperature:g} N={base:g} theta={theta:g}"
        return cls(name, policy, description, logits_processor=lambda scores: warper(None, scores))

    @classmethod
    def adapter(
        cls, name: str, adapter: DecodingAdapterModel | str | os.PathLike, deterministic: bool = True
    ) -> Decoder:
        source = adapter if isinstance(adapter, (str, os.PathLike)) else adapter.name_or_path
        if isinstance(adapter, (str, os.PathLike)):
            adapter = AutoDecodingAdapter.from_pretrained(resolve_adapter(adapter))
        mode = "most likely action" if deterministic else "sampled actions"
        description = f"{adapter.level}-level adapter {source} ({mode}); weights {_fingerprint(adapter)}"
        return cls(name, adapter.eval(), description, deterministic=deterministic)

    @classmethod
    def from_spec(cls, spec: str) -> Decoder:
        """
        Build a decoder from `"<name>=<kind>[:<argument>]"`:

        - `static:<action>`: one action, e.g. `greedy=static:greedy` or `min-p=static:T=1 min_p=0.1`;
        - `best:<selection.json>`: the best single action on validation, from `recipes/select_actions.py`;
        - `mixed:<preset or action-space JSON>`: uniform over an action space, at its level;
        - `edt[:<T0>,<N>,<theta>]`: entropy-based dynamic temperature;
        - `adapter:<folder or Hub id>` (most likely action) or `adapter-sampled:<...>` (sampled actions).
        """
        kinds = ("static", "best", "mixed", "edt", "adapter", "adapter-sampled")
        match = re.fullmatch(
            r"(?P<name>.+?)=(?P<kind>adapter-sampled|[a-z]+)(?::(?P<argument>.*))?", str(spec).strip()
        )
        name, kind, argument = (
            (match["name"].strip(), match["kind"], (match["argument"] or "").strip()) if match else ("", "", "")
        )
        if not name or kind not in kinds or (kind != "edt" and not argument):
            raise ValueError(
                f"Decoder spec {spec!r} must be '<name>=<kind>[:<argument>]' with kind one of {kinds}, e.g. "
                "'greedy=static:greedy', 'BEST=best:selection.json', 'EDT=edt:1.0,0.8,1.0', 'ours=adapter:folder'."
            )
        if kind == "static":
            return cls.static(name, argument)
        if kind == "best":
            with open(argument) as handle:
                selection = json.load(handle)
            best = selection.get("best") if isinstance(selection, dict) else None
            if not isinstance(best, dict) or not {"action", "mean_reward"} <= best.keys():
                raise ValueError(
                    f"{argument!r} has no 'best' entry with 'action' and 'mean_reward'; a BEST decoder reads the "
                    "selection.json that recipes/select_actions.py writes."
                )
            decoder = cls.static(name, DecodingAction.from_dict(best["action"]))
            decoder.description += f" (best on validation: {best['mean_reward']:.3f})"
            return decoder
        if kind == "mixed":
            return cls.mixed(name, argument)
        if kind == "edt":
            values = [float(v) for v in argument.split(",")] if argument else []
            if len(values) > 3:
                raise ValueError(f"edt takes at most 3 numbers (T0, N, theta), got {argument!r}.")
            return cls.edt(name, *values)
        return cls.adapter(name, argument, deterministic=kind == "adapter")


def _fingerprint(adapter: DecodingAdapterModel) -> str:
    digest = hashlib.sha256()
    for key, tensor in sorted(adapter.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:12]


@torch.no_grad()
def evaluate_decoders(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    decoders: Sequence[Decoder],
    dataset: Dataset,
    reward_funcs: Callable | Sequence[Callable],
    token_budgets: Sequence[int] = (48,),
    ks: Sequence[int] = (1, 2, 4, 8),
    num_samples: int = 8,
    seeds: Sequence[int] = (0, 1, 2),
    instruction: str | None = None,
    system_prompt: str | None = None,
    rows_per_batch: int = 256,
    success_threshold: float = 1.0,
    reference: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    reward_timeout: float | None = 300.0,
    max_recorded_tokens: int = 20_000,
    disable_tqdm: bool = False,
) -> dict[str, Any]:
    """
    Run every decoder on every problem, `num_samples` samples each, for each token budget and seed, and estimate
    Pass@k with the unbiased estimator (a sample passes when its reward is at least `success_threshold`).

    All decoders see the same prompts, the same budgets and the same random numbers: a sample's noise is keyed by
    the seed, the problem's index, the sample's index and the position (see [`~generation.noise`]), so decoders are
    compared pair by pair, and a static action and a policy that always picks it give the same samples. A
    budget-aware sequence-level adapter is told `B = k` for Pass@k.
    Each (decoder, budget, seed) is cached in `cache_dir` once done, so an interrupted evaluation resumes and adding
    a decoder only runs that decoder.

    Confidence intervals are 95% normal intervals over problems: each problem's Pass@k is averaged over the seeds,
    and the interval is `1.96 * std / sqrt(problems)`. Differences to `reference` are paired by problem.

    Returns:
        `dict` (JSON-ready) with `settings`, `decoders` (descriptions), `results` (one entry per decoder, budget
        and k: `mean`, `ci95`, `seed_means`, and `delta`/`delta_ci95` against the reference), `lengths`
        (generated tokens of every sample) and `token_entropy` (per-token entropy and chosen action, token-level
        decoders).
    """
    _check_evaluation(decoders, dataset, ks, num_samples, reference)
    reward_funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
    rows = dataset.to_list()
    settings = {
        "model": getattr(model, "name_or_path", None),
        "num_problems": len(rows),
        "num_samples": num_samples,
        "seeds": list(seeds),
        "token_budgets": list(token_budgets),
        "ks": list(ks),
        "instruction": instruction,
        "system_prompt": system_prompt,
        "success_threshold": success_threshold,
        "rows_per_batch": rows_per_batch,
        "rewards": [reward_function_name(func) for func in reward_funcs],
        "max_recorded_tokens": max_recorded_tokens,
        "sampling": SAMPLING,
        "dataset_fingerprint": dataset_fingerprint(rows),
    }
    options = {
        "num_samples": num_samples,
        "instruction": instruction,
        "system_prompt": system_prompt,
        "rows_per_batch": rows_per_batch,
        "reward_timeout": reward_timeout,
        "max_recorded_tokens": max_recorded_tokens,
    }
    units = [
        (decoder, budget, seed, parallel)
        for decoder in decoders
        for budget in token_budgets
        for seed in seeds
        for parallel in (ks if decoder.budget_aware else [None])
    ]
    run = functools.partial(_run_unit, model, tokenizer, rows=rows, reward_funcs=reward_funcs, options=options)
    outcomes = _run_units(units, run, settings, cache_dir, len(rows), disable_tqdm)
    return _summarise(decoders, outcomes, settings, reference, success_threshold)


def dataset_fingerprint(rows: list[dict[str, Any]]) -> str:
    """A short hash of the problems (rows, in order): what tells two evaluations on the same problems apart."""
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _check_evaluation(decoders, dataset, ks, num_samples, reference) -> None:
    names = [decoder.name for decoder in decoders]
    if not decoders or len(set(names)) != len(names):
        raise ValueError(f"Give at least one decoder, with distinct names; got {names}.")
    if len(dataset) == 0:
        raise ValueError("The evaluation dataset is empty.")
    if not ks or max(ks) > num_samples or min(ks) < 1:
        raise ValueError(f"ks must be in [1, num_samples={num_samples}], got {list(ks)}.")
    if reference is not None and reference not in names:
        raise ValueError(f"reference {reference!r} is not one of the decoders {names}.")


def _run_units(units, run, settings, cache_dir, num_rows, disable_tqdm) -> dict[tuple, dict[str, Any]]:
    """Each (decoder, budget, seed, B) from the cache when it holds it for the same context, else run and cached."""
    # What decides a unit's outcome (not the other seeds or budgets of this call): units are shared by calls.
    shared = ("seeds", "token_budgets", "ks", "success_threshold")
    fixed = {key: value for key, value in settings.items() if key not in shared}
    outcomes: dict[tuple, dict[str, Any]] = {}
    progress = tqdm(total=len(units) * num_rows, desc="Evaluating decoders", disable=disable_tqdm)
    for decoder, budget, seed, parallel in units:
        progress.set_postfix(decoder=decoder.name, budget=budget, seed=seed)
        context = {**fixed, "decoder": decoder.description, "budget": budget, "seed": seed, "B": parallel}
        path = _unit_path(cache_dir, decoder.name, budget, seed, parallel)
        outcome = _load_unit(path, context)
        if outcome is None:
            partial = path.with_suffix(".partial.pt") if path is not None else None
            outcome = run(
                decoder=decoder,
                budget=budget,
                seed=seed,
                parallel=parallel,
                partial=(partial, context),
                progress=progress,
            )
            _save_unit(path, context, outcome)
            if partial is not None:
                partial.unlink(missing_ok=True)
        else:
            progress.update(num_rows)
        outcomes[(decoder.name, budget, seed, parallel)] = outcome
    progress.close()
    return outcomes


def _run_unit(
    model, tokenizer, decoder, rows, reward_funcs, budget, seed, parallel, options, partial=(None, None), progress=None
) -> dict[str, Any]:
    """Generate and score one (decoder, budget, seed[, B]): rewards and lengths per problem and sample, and at
    token level a subsample of (entropy, action) per generated token. With `partial` (a path and the unit's
    context), the batches done so far are kept there after each batch, and a run killed mid-unit continues from
    them (a problem's samples depend only on its own key, so batches done apart give the same outcome)."""
    num_samples, instruction, system_prompt = options["num_samples"], options["instruction"], options["system_prompt"]
    rows_per_batch, reward_timeout = options["rows_per_batch"], options["reward_timeout"]
    max_recorded_tokens = options["max_recorded_tokens"]
    samples = 1 if decoder.samples_identical else num_samples
    per_batch = max(1, rows_per_batch // samples)
    partial_path, context = partial
    state = _load_partial(partial_path, context) or {
        "done": 0,
        "rewards": [],
        "lengths": [],
        "entropies": [],
        "actions": [],
    }
    rewards, lengths, entropies, actions = state["rewards"], state["lengths"], state["entropies"], state["actions"]
    if progress is not None:
        progress.update(state["done"])
    for start in range(state["done"], len(rows), per_batch):
        chunk = rows[start : start + per_batch]
        scored = rollout_and_score(
            model,
            tokenizer,
            decoder.policy,
            chunk,
            reward_funcs,
            num_samples=samples,
            token_budgets=budget,
            instructions=instruction,
            system_prompt=system_prompt,
            seed=seed,
            problem_ids=range(start, start + len(chunk)),
            deterministic=decoder.deterministic,
            parallel_budgets=parallel,
            logits_processor=decoder.logits_processor,
            reward_timeout=reward_timeout,
        )
        batch = scored.batch
        rewards += scored.rewards.view(len(chunk), samples).tolist()
        lengths += batch.completion_mask.sum(dim=1).view(len(chunk), samples).tolist()
        if decoder.level == "token":
            entropies.append(batch.entropies.cpu())
            actions.append(batch.actions.cpu())
        state["done"] = start + len(chunk)
        _save_partial(partial_path, context, state)
        if progress is not None:
            progress.update(len(chunk))
    outcome: dict[str, Any] = {"rewards": rewards, "lengths": lengths}
    if entropies:
        entropy, action = torch.cat(entropies), torch.cat(actions)
        keep = torch.linspace(0, len(entropy) - 1, min(len(entropy), max_recorded_tokens)).long()
        outcome["token_entropy"] = [round(value, 4) for value in entropy[keep].tolist()]
        outcome["token_action"] = action[keep].tolist()
    return outcome


def _unit_path(cache_dir, name: str, budget: int, seed: int, parallel: int | None) -> Path | None:
    if cache_dir is None:
        return None
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    suffix = f"-B{parallel}" if parallel is not None else ""
    return Path(cache_dir) / f"{safe}-b{budget}-s{seed}{suffix}.json"


def _load_partial(path: Path | None, context: dict[str, Any]) -> dict[str, Any] | None:
    if path is None or not path.exists():
        return None
    try:
        saved = torch.load(path, weights_only=True)
    except Exception:  # cut by a kill (the file is replaced atomically, so this is only a foreign file): start over
        return None
    return saved["state"] if saved.get("context") == json.dumps(context, sort_keys=True, default=str) else None


def _save_partial(path: Path | None, context: dict[str, Any], state: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    torch.save({"context": json.dumps(context, sort_keys=True, default=str), "state": state}, temporary)
    os.replace(temporary, path)


def _load_unit(path: Path | None, context: dict[str, Any]) -> dict[str, Any] | None:
    if path is None or not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError:  # cut by a kill: run it again
        return None
    return saved["outcome"] if saved.get("context") == json.loads(json.dumps(context, default=str)) else None


def _save_unit(path: Path | None, context: dict[str, Any], outcome: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps({"context": context, "outcome": outcome}, default=str))
    os.replace(partial, path)  # a kill leaves the old file or the new one, never half of one


def _pass_at_k_per_problem(rewards: list[list[float]], k: int, threshold: float) -> torch.Tensor:
    correct = torch.tensor(rewards, dtype=torch.float64) >= threshold  # NaN (not scored) counts as a failure
    n = torch.full((correct.shape[0],), correct.shape[1])
    if correct.shape[1] == 1:  # identical samples (greedy): pass@k is the one sample's result
        return correct[:, 0].double()
    return pass_at_k(n, correct.sum(dim=1), k).double()


def _summarise(decoders, outcomes, settings, reference, threshold) -> dict[str, Any]:
    results = []
    scores_per_problem: dict[str, dict[str, dict[str, list[float]]]] = {}
    for decoder in decoders:
        scores_per_problem[decoder.name] = {}
        for budget in settings["token_budgets"]:
            scores_per_problem[decoder.name][str(budget)] = {}
            for k in settings["ks"]:
                parallel = k if decoder.budget_aware else None
                scores = torch.stack(
                    [
                        _pass_at_k_per_problem(
                            outcomes[(decoder.name, budget, seed, parallel)]["rewards"], k, threshold
                        )
                        for seed in settings["seeds"]
                    ]
                )
                scores_per_problem[decoder.name][str(budget)][str(k)] = scores.mean(dim=0).tolist()
                results.append(
                    {
                        "decoder": decoder.name,
                        "token_budget": budget,
                        "k": k,
                        "mean": float(scores.mean()),
                        "ci95": half_width(scores.mean(dim=0)),
                        "seed_means": scores.mean(dim=1).tolist(),
                    }
                )
    main_budget = max(settings["token_budgets"])  # the budget the report plots lead with
    lengths = {
        decoder.name: {
            str(budget): [
                length
                for seed in settings["seeds"]
                for parallel in ([settings["ks"][0]] if decoder.budget_aware else [None])
                for problem in outcomes[(decoder.name, budget, seed, parallel)]["lengths"]
                for length in problem
            ]
            for budget in settings["token_budgets"]
        }
        for decoder in decoders
    }
    token_entropy = {}
    for decoder in decoders:
        outcome = outcomes[(decoder.name, main_budget, settings["seeds"][0], None)] if not decoder.budget_aware else {}
        if "token_entropy" in outcome:
            token_entropy[decoder.name] = {
                "action_names": decoder.policy.decoding_config.action_names,
                "entropy": outcome["token_entropy"],
                "action": outcome["token_action"],
            }
    summary = {
        "settings": dict(settings),
        "decoders": {
            decoder.name: {
                "description": decoder.description,
                "level": decoder.level,
                "budget_aware": decoder.uses_budget,
            }
            for decoder in decoders
        },
        "results": results,
        "per_problem": scores_per_problem,
        "lengths": lengths,
        "token_entropy": token_entropy,
    }
    set_reference(summary, reference)
    return summary
