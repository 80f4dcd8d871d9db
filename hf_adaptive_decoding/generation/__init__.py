"""One decoding step: features from the forward pass, the policy's actions, the per-row transform, per-row noise;
`generate(decoding_adapter=...)` and the rollout loop that training and evaluation decode with."""
