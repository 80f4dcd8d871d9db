import pytest
import torch

from hf_adaptive_decoding import AdaptiveDecodingConfig, AutoDecodingAdapter, DecodingAction
from hf_adaptive_decoding.generation.rollout import generate_rollouts
from tests.conftest import EOS, left_padded_batch
from tests.generation.test_generate import TOKEN_ACTIONS, forced_adapter


def _visible(ids, mask, width):
    return torch.where(mask[:, :width], ids[:, :width], -1)


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_greedy_rollouts_equal_plain_generate_with_shrinking_batch(tiny_model, level):
    """Rows are dropped from the batch and KV cache as they end (EOS or their own token budget); every row still
    gets exactly the tokens plain greedy generate gives it, so positions, masks and cache stay aligned."""
    inputs = left_padded_batch()
    adapter = forced_adapter(tiny_model, TOKEN_ACTIONS, 0, level=level)
    budgets = torch.tensor([12, 5, 9])
    batch = generate_rollouts(
        tiny_model, adapter, inputs["input_ids"], inputs["attention_mask"], torch.tensor([2, 1, 3]), budgets, True
    )
    plain = tiny_model.generate(**inputs, do_sample=False, max_new_tokens=12)[:, inputs["input_ids"].shape[1] :]
    assert batch.input_index.tolist() == [0, 0, 1, 2, 2, 2]
    expected = plain[batch.input_index]
    # Plain generate runs every row to 12 tokens (or EOS); each rollout row stops at its own budget.
    lengths = batch.completion_mask.sum(1)
    for row, length in enumerate(lengths.tolist()):
        ended_by_eos = (expected[row, :length] == EOS).any()
        assert length == (
            int((expected[row] == EOS).nonzero()[0]) + 1 if ended_by_eos else budgets[batch.input_index[row]]
        )
        assert torch.equal(batch.completion_ids[row, :length], expected[row, :length])
    assert (batch.completion_ids[~batch.completion_mask] == tiny_model.generation_config.pad_token_id).all()
    if level == "token":
        assert len(batch.actions) == int(lengths.sum())  # one decision per generated token
        assert batch.decision_rows.bincount(minlength=6).tolist() == lengths.tolist()
        # The remaining budget b_t counts down from each row's budget.
        first = batch.budgets[batch.decision_rows == 2]  # row 2 is input 1, budget 5
        assert first.tolist() == [5.0, 4.0, 3.0, 2.0, 1.0][: len(first)]
    else:
        assert len(batch.actions) == 3  # one decision per input
        assert batch.budgets.tolist() == [2.0, 1.0, 3.0]  # the parallel budget B of each input
        assert batch.max_probs is None


def test_token_level_records_features_and_max_probs(llama):
    inputs = left_padded_batch()
    config = AdaptiveDecodingConfig(actions=TOKEN_ACTIONS, level="token", budget_feature="log")
    adapter = AutoDecodingAdapter.for_model(llama, config).eval()
    torch.manual_seed(0)
    batch = generate_rollouts(
        llama, adapter, inputs["input_ids"], inputs["attention_mask"], torch.tensor([2, 2, 2]), torch.tensor([6] * 3)
    )
    steps = len(batch.actions)
    assert batch.features.shape == (steps, llama.config.hidden_size)
    assert batch.action_probs.shape == (steps, 2)
    assert ((batch.max_probs > 0) & (batch.max_probs <= 1)).all()
    # The recorded features reproduce the recorded policy exactly.
    probs = adapter(batch.features, batch.budgets).logits.softmax(-1)
    torch.testing.assert_close(probs, batch.action_probs)


def test_sequence_level_samples_of_an_input_share_its_action(llama):
    inputs = left_padded_batch(lengths=(5, 5, 5))
    actions = [DecodingAction(do_sample=False), DecodingAction(temperature=1.0)]
    adapter = AutoDecodingAdapter.for_model(llama, AdaptiveDecodingConfig(actions=actions, level="sequence")).eval()
    with torch.no_grad():
        adapter.output_layer.bias.copy_(torch.tensor([100.0, -100.0]))  # greedy: every sample of an input is equal
    batch = generate_rollouts(
        llama, adapter, inputs["input_ids"], inputs["attention_mask"], torch.tensor([4, 4, 4]), torch.tensor([8] * 3)
    )
    assert batch.actions.tolist() == [0, 0, 0]
    for prompt in range(3):
        rows = batch.completion_ids[batch.input_index == prompt]
        assert (rows == rows[0]).all()


def test_token_level_adapter_with_mean_prompt_pooling_rolls_out(llama):
    inputs = left_padded_batch()
    config = AdaptiveDecodingConfig(actions=TOKEN_ACTIONS, level="token", prompt_pooling="mean")
    adapter = AutoDecodingAdapter.for_model(llama, config).eval()
    batch = generate_rollouts(
        llama, adapter, inputs["input_ids"], inputs["attention_mask"], torch.tensor([2, 1, 3]), torch.tensor([5] * 3)
    )
    assert len(batch.actions) == int(batch.completion_mask.sum())


@pytest.mark.parametrize(
    ("num_samples", "budgets", "name"),
    [
        ([2, 0, 1], [4, 4, 4], "num_samples"),
        ([1, 1], [4, 4, 4], "num_samples"),
        ([1, 1, 1], [4, -1, 4], "token_budgets"),
    ],
)
def test_bad_sample_counts_and_budgets_are_named(llama, num_samples, budgets, name):
    inputs = left_padded_batch()
    adapter = forced_adapter(llama, TOKEN_ACTIONS, 0)
    with pytest.raises(ValueError, match=f"{name} must hold one int >= 1 per input"):
        generate_rollouts(
            llama,
            adapter,
            inputs["input_ids"],
            inputs["attention_mask"],
            torch.tensor(num_samples),
            torch.tensor(budgets),
        )


def _rollout(model, policy, inputs, num_samples, budgets, **kwargs):
    return generate_rollouts(
        model,
        policy,
        inputs["input_ids"],
        inputs["attention_mask"],
        torch.tensor(num_samples),
        torch.tensor(budgets),
        **kwargs,
    )


def test_fixed_actions_give_each_row_its_own_action(llama):
    """Greedy rows of a prompt are exactly plain greedy generate, next to high-temperature rows of the same prompt
    (which share the prefill); no decisions are recorded."""
    from hf_adaptive_decoding.generation.policies import ConstantPolicy

    inputs = left_padded_batch()
    actions = [DecodingAction(do_sample=False), DecodingAction(temperature=5.0)]
    policy = ConstantPolicy(actions, probs=[0.0, 1.0], level="sequence")  # left alone, it would never pick greedy
    fixed = torch.tensor([1, 0, 1, 0, 0, 1, 1])  # inputs 0, 0, 0, 1, 1, 2, 2
    torch.manual_seed(0)
    batch = _rollout(llama, policy, inputs, [3, 2, 2], [8, 8, 8], fixed_actions=fixed)
    assert batch.input_index.tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert batch.actions is None and batch.features is None and batch.decision_rows is None
    plain = llama.generate(**inputs, do_sample=False, max_new_tokens=8)[:, inputs["input_ids"].shape[1] :]
    lengths = batch.completion_mask.sum(1)
    greedy_rows = (fixed == 0).nonzero().flatten().tolist()
    for row in greedy_rows:
        expected = plain[batch.input_index[row]]
        length = int(lengths[row])
        assert torch.equal(batch.completion_ids[row, :length], expected[:length]), row
        assert length == 8 or expected[length - 1] == EOS
    hot_rows = (fixed == 1).nonzero().flatten().tolist()
    differs = [not torch.equal(batch.completion_ids[row, :2], plain[batch.input_index[row], :2]) for row in hot_rows]
    assert any(differs)  # T=5 on these sharp tiny models does not reproduce greedy


def test_prompt_features_are_what_the_adapter_decides_from_also_with_fixed_actions(llama):
    inputs = left_padded_batch()
    adapter = AutoDecodingAdapter.for_model(llama, "mixed-seq", adapter_hidden_size=16).eval()
    decided = _rollout(llama, adapter, inputs, [2, 1, 2], [4, 4, 4])
    torch.testing.assert_close(decided.prompt_features, decided.features)  # one decision per input, from these
    fixed = _rollout(llama, adapter, inputs, [2, 1, 2], [4, 4, 4], fixed_actions=torch.tensor([0, 5, 1, 2, 3]))
    assert fixed.actions is None and fixed.prompt_features.shape == (3, llama.config.hidden_size)
    torch.testing.assert_close(fixed.prompt_features, decided.features)


@pytest.mark.parametrize(
    ("level", "fixed", "message"),
    [
        ("sequence", [0, 1, 0], "per row \\(4 rows\\).*\\[0, 1, 0\\]"),
        ("sequence", [[0, 1, 0, 1]], "\\[\\[0, 1, 0, 1\\]\\]"),
        (
            "sequence",
            [0, 1, len(TOKEN_ACTIONS), 1],
            f"in \\[0, {len(TOKEN_ACTIONS)}\\).*\\[0, 1, {len(TOKEN_ACTIONS)}, 1\\]",
        ),
        ("sequence", [0, -1, 0, 1], "\\[0, -1, 0, 1\\]"),
        ("token", [0, 1, 0, 1], "a token-level policy"),
    ],
)
def test_fixed_actions_need_a_sequence_policy_and_one_action_per_row(llama, level, fixed, message):
    from hf_adaptive_decoding.generation.policies import ConstantPolicy

    inputs = left_padded_batch(lengths=(5, 3))
    policy = ConstantPolicy.mixed(TOKEN_ACTIONS, level=level)
    with pytest.raises(ValueError, match=f"fixed_actions needs a sequence-level policy.*{message}"):
        _rollout(llama, policy, inputs, [2, 2], [4, 4], fixed_actions=torch.tensor(fixed))


def test_parallel_budgets_are_refused_at_token_level(llama):
    from hf_adaptive_decoding.generation.policies import ConstantPolicy

    inputs = left_padded_batch(lengths=(5, 3))
    policy = ConstantPolicy.mixed(TOKEN_ACTIONS, level="token")
    with pytest.raises(ValueError, match="parallel_budgets is a sequence-level input"):
        _rollout(llama, policy, inputs, [2, 2], [4, 4], parallel_budgets=torch.tensor([2, 2]))


def test_parallel_budgets_are_what_a_budget_aware_sequence_adapter_is_told(llama, monkeypatch):
    from tests.generation.test_generate import spy_on_policy

    inputs = left_padded_batch()
    actions = [DecodingAction(temperature=0.5), DecodingAction(temperature=1.0), DecodingAction(temperature=1.5)]
    config = AdaptiveDecodingConfig(actions=actions, level="sequence", budget_feature="log")
    adapter = AutoDecodingAdapter.for_model(llama, config).eval()
    torch.manual_seed(0)
    torch.nn.init.normal_(adapter.output_layer.weight, std=2.0)
    calls = spy_on_policy(adapter, monkeypatch)
    batch = _rollout(
        llama, adapter, inputs, [4, 4, 4], [3, 3, 3], parallel_budgets=torch.tensor([1, 2, 16]), deterministic=True
    )
    assert len(calls) == 1 and calls[0][1].tolist() == [1, 2, 16]
    assert batch.budgets.tolist() == [1.0, 2.0, 16.0]
    assert batch.input_index.tolist() == [0] * 4 + [1] * 4 + [2] * 4  # still 4 samples each
    # The recorded features and budgets reproduce the recorded policy, which differs from the one told B = 4.
    told = adapter(batch.features, batch.budgets).logits.softmax(-1)
    torch.testing.assert_close(told, batch.action_probs)
    as_drawn = adapter(batch.features, torch.tensor([4, 4, 4])).logits.softmax(-1)
    assert not torch.allclose(as_drawn, batch.action_probs)
    # Default: the number of samples drawn.
    default = _rollout(llama, adapter, inputs, [4, 1, 2], [3, 3, 3], deterministic=True)
    assert default.budgets.tolist() == [4.0, 1.0, 2.0]


@pytest.mark.parametrize("parallel", [[1, 2], [1, 0, 2], [[1, 1, 1]]])
def test_bad_parallel_budgets_are_named(llama, parallel):
    inputs = left_padded_batch()
    adapter = forced_adapter(llama, TOKEN_ACTIONS, 0, level="sequence")
    with pytest.raises(ValueError, match="parallel_budgets must hold one int >= 1 per input"):
        _rollout(llama, adapter, inputs, [1, 1, 1], [3, 3, 3], parallel_budgets=torch.tensor(parallel))


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_logits_processor_is_applied_before_the_action(llama, level):
    """A processor that masks every token but one forces it, whatever the action (greedy, or sampling with top-k
    and top-p); what is recorded is read from the language model's own logits."""
    from hf_adaptive_decoding.generation.features import next_token_entropy
    from hf_adaptive_decoding.generation.policies import ConstantPolicy

    forced_token = 42
    seen = []

    def only_one_token(scores):
        seen.append(scores.clone())
        masked = torch.full_like(scores, -float("inf"))
        masked[:, forced_token] = scores[:, forced_token]
        return masked

    inputs = left_padded_batch()
    policy = ConstantPolicy.mixed(TOKEN_ACTIONS, level=level)
    torch.manual_seed(0)
    batch = _rollout(llama, policy, inputs, [2, 1, 2], [6, 4, 5], logits_processor=only_one_token)
    assert batch.completion_mask.sum(1).tolist() == [6, 6, 4, 5, 5]
    assert (batch.completion_ids[batch.completion_mask] == forced_token).all()
    assert len(seen) == 6 and seen[0].shape == (5, llama.config.vocab_size)
    if level == "token":
        # The first step's entropies are the model's, not the masked distribution's (which would be 0).
        assert (batch.entropies > 0).all()
        first = batch.entropies[: len(batch.input_index)]
        torch.testing.assert_close(first, next_token_entropy(seen[0]))


def test_token_level_entropies_are_those_of_the_models_logits(llama):
    """One entropy and one max probability per decision, each from the language model's next-token logits."""
    from hf_adaptive_decoding.generation.features import next_token_entropy
    from hf_adaptive_decoding.generation.policies import ConstantPolicy

    inputs = left_padded_batch()
    policy = ConstantPolicy.static(DecodingAction(do_sample=False), level="token")
    batch = _rollout(llama, policy, inputs, [1, 1, 1], [6, 6, 6])
    plain = llama.generate(
        **inputs, do_sample=False, max_new_tokens=6, output_logits=True, return_dict_in_generate=True
    )
    lengths = batch.completion_mask.sum(1)
    assert len(batch.entropies) == len(batch.max_probs) == len(batch.actions) == int(lengths.sum())
    for row in range(3):
        length = int(lengths[row])
        logits = torch.stack([step[row] for step in plain.logits[:length]]).float()
        assert torch.equal(batch.completion_ids[row, :length], logits.argmax(-1))
        mine = batch.decision_rows == row
        torch.testing.assert_close(batch.entropies[mine], next_token_entropy(logits), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(batch.max_probs[mine], logits.softmax(-1).amax(-1), atol=1e-5, rtol=1e-4)
    assert (batch.entropies > 0).all()


def test_entropy_adapter_rollouts_record_the_entropy_as_its_feature(llama):
    config = AdaptiveDecodingConfig(actions=TOKEN_ACTIONS, level="token", context_features="entropy")
    adapter = AutoDecodingAdapter.for_model(llama, config).eval()
    torch.nn.init.normal_(adapter.output_layer.weight)
    inputs = left_padded_batch()
    torch.manual_seed(0)
    batch = _rollout(llama, adapter, inputs, [2, 1, 1], [5, 5, 5])
    assert batch.features.shape == (len(batch.actions), 1)
    torch.testing.assert_close(batch.features[:, 0], batch.entropies)
    torch.testing.assert_close(adapter(batch.features, batch.budgets).logits.softmax(-1), batch.action_probs)


def test_stats_adapter_rollouts_see_the_hidden_state_then_entropy_and_max_prob(llama):
    config = AdaptiveDecodingConfig(actions=TOKEN_ACTIONS, level="token", context_features="hidden_state+stats")
    adapter = AutoDecodingAdapter.for_model(llama, config).eval()
    torch.nn.init.normal_(adapter.output_layer.weight)
    inputs = left_padded_batch()
    torch.manual_seed(0)
    batch = _rollout(llama, adapter, inputs, [2, 1, 1], [5, 5, 5])
    assert batch.features.shape == (len(batch.actions), llama.config.hidden_size + 2)
    torch.testing.assert_close(batch.features[:, -2], batch.entropies)
    torch.testing.assert_close(batch.features[:, -1], batch.max_probs)
    torch.testing.assert_close(adapter(batch.features, batch.budgets).logits.softmax(-1), batch.action_probs)


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_constant_policy_rollouts(llama, level):
    """A static greedy ConstantPolicy is plain greedy decoding at both levels; a mixed one records a uniform
    policy (one decision per token, or per input)."""
    from hf_adaptive_decoding.generation.policies import ConstantPolicy

    inputs = left_padded_batch()
    greedy = ConstantPolicy.static(DecodingAction(do_sample=False), level=level)
    batch = _rollout(llama, greedy, inputs, [2, 1, 1], [7, 7, 7])
    plain = llama.generate(**inputs, do_sample=False, max_new_tokens=7)[:, inputs["input_ids"].shape[1] :]
    expected = plain[batch.input_index]
    assert torch.equal(
        _visible(batch.completion_ids, batch.completion_mask, 7), _visible(expected, batch.completion_mask, 7)
    )
    assert (batch.actions == 0).all()

    mixed = ConstantPolicy.mixed(TOKEN_ACTIONS, level=level)
    torch.manual_seed(3)
    batch = _rollout(llama, mixed, inputs, [2, 1, 1], [6, 6, 6])
    decisions = int(batch.completion_mask.sum()) if level == "token" else 3
    assert batch.action_probs.shape == (decisions, 2)
    torch.testing.assert_close(batch.action_probs, torch.full((decisions, 2), 0.5))
    assert batch.features.shape == (decisions, llama.config.hidden_size)
    if level == "token":
        assert batch.entropies.shape == (decisions,) and batch.budgets[:4].tolist() == [6.0] * 4
    else:
        assert batch.entropies is None and batch.budgets.tolist() == [2.0, 1.0, 1.0]


def test_a_static_action_and_a_policy_that_always_picks_it_sample_the_same_tokens(llama):
    """Under sampling, with one set of noise keys: `ConstantPolicy.static(a)` at token and sequence level, and an
    adapter whose sampled action is always `a`, give token for token the same rollouts."""
    from hf_adaptive_decoding.generation.policies import ConstantPolicy

    inputs = left_padded_batch()
    keys = torch.tensor([11, 22, 33])
    action = TOKEN_ACTIONS[1]
    runs = [
        _rollout(llama, policy, inputs, [3, 2, 3], [10, 8, 10], noise_keys=keys)
        for policy in (
            ConstantPolicy.static(action, level="token"),
            ConstantPolicy.static(action, level="sequence"),
            ConstantPolicy(TOKEN_ACTIONS, [0.0, 1.0], level="token"),
            forced_adapter(llama, TOKEN_ACTIONS, 1),
            forced_adapter(llama, TOKEN_ACTIONS, 1, level="sequence"),
        )
    ]
    for run in runs[1:]:
        assert torch.equal(run.completion_ids, runs[0].completion_ids)
    assert len(set(map(tuple, runs[0].completion_ids.tolist()))) > 1  # it really samples


def test_a_rows_tokens_depend_on_its_key_and_sample_index_only(llama):
    """A prompt's samples are the same alone or next to other prompts, with more samples after them, or fewer rows
    finishing around them; another key gives other samples."""
    from hf_adaptive_decoding.generation.policies import ConstantPolicy

    policy = ConstantPolicy.static(TOKEN_ACTIONS[1], level="token")
    batch = left_padded_batch()
    together = _rollout(llama, policy, batch, [2, 4, 2], [10, 6, 10], noise_keys=torch.tensor([5, 6, 7]))
    first = {k: v[:1] for k, v in batch.items()}
    alone = _rollout(llama, policy, first, [3], [10], noise_keys=torch.tensor([5]))
    assert torch.equal(alone.completion_ids[:2], together.completion_ids[:2])
    other = _rollout(llama, policy, first, [2], [10], noise_keys=torch.tensor([8]))
    assert not torch.equal(other.completion_ids, together.completion_ids[:2])


def test_sample_indices_choose_whose_noise_a_row_draws(llama):
    from hf_adaptive_decoding.generation.policies import ConstantPolicy

    policy = ConstantPolicy.static(TOKEN_ACTIONS[1], level="token")
    first = {k: v[:1] for k, v in left_padded_batch().items()}
    shared = _rollout(
        llama, policy, first, [3], [10], noise_keys=torch.tensor([4]), sample_indices=torch.zeros(3).long()
    )
    assert (shared.completion_ids == shared.completion_ids[:1]).all()


def test_a_policy_without_the_noise_argument_still_decodes(llama):
    """A custom policy written to the three-argument `select_actions` draws its actions itself."""
    from hf_adaptive_decoding.generation.policies import ConstantPolicy

    class OldPolicy(ConstantPolicy):
        def select_actions(self, hidden_states, budget=None, deterministic=False):
            return super().select_actions(hidden_states, budget, deterministic)

    inputs = left_padded_batch()
    old = _rollout(
        llama,
        OldPolicy.static(TOKEN_ACTIONS[1], level="token"),
        inputs,
        [2, 2, 2],
        [6, 6, 6],
        noise_keys=torch.tensor([1, 2, 3]),
    )
    new = _rollout(
        llama,
        ConstantPolicy.static(TOKEN_ACTIONS[1], level="token"),
        inputs,
        [2, 2, 2],
        [6, 6, 6],
        noise_keys=torch.tensor([1, 2, 3]),
    )
    assert torch.equal(old.completion_ids, new.completion_ids)
