"""Human-readable views of task examples, for checking a pipeline by eye."""

from prottrans_jax import tasks


def describe_examples(task_name: str, feature_lengths: dict[str, int],
                      num_examples: int, split: str = "train",
                      seed: int = 0) -> str:
  """Decoded inputs and targets of the first examples of a task.

  Masked positions show as `_` in the inputs, so the objective is visible.
  """
  task = tasks.get_task(task_name)
  dataset = task.get_dataset(feature_lengths, split=split, shuffle=True,
                             seed=seed)
  lines = [f"task {task_name!r}, split {split!r}, seed {seed}"]
  for example in dataset.take(num_examples).as_numpy_iterator():
    lines.append(f"- {example['id'].decode()}:")
    for feature in ("inputs", "targets"):
      vocab = task.output_features[feature].vocabulary
      ids = [int(i) for i in example[feature]]
      text = "".join("_" if i == vocab.mask_id else vocab.decode([i])
                     for i in ids)
      lines.append(f"    {feature:8} ({len(ids):4} ids) {text[:100]}"
                   f"{'...' if len(text) > 100 else ''}")
  return "\n".join(lines)
