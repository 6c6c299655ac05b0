"""Ray actors: the only package that imports ray, deepspeed and vllm (each module lazily or on use).

| module          | role                                                                    |
|-----------------|-------------------------------------------------------------------------|
| group.py        | ActorGroup (placement group, fan-out calls with timeouts), start_learners |
| learner.py      | LearnerActor: DeepSpeed ZeRO 0-3 rank, LoRA, train_step, export weights |
| reference.py    | ReferenceActor: frozen initial model, log-probs / scores                |
| model_io.py     | load / LoRA / policy forward (token log-probs, score) / merged export    |
| common.py       | device, backend, dtype, DeepSpeed import and process-group set-up       |
| generator.py    | GeneratorActor: a vLLM engine                                           |
| reward_model.py | a reward model served as an actor                                       |
| weight_sync/    | learner -> generator weight sync: transport interface, wire format,      |
|                 | one module per backend (shared_memory, broadcast, object_store, auto)    |

Importing ``actors`` itself imports nothing heavy; import the module you need.
"""
