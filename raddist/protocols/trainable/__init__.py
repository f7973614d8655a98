"""What the trainable protocols (protocols/finetune.py, lora.py, bitfit.py) share: one Ray Train loop.

  data.py      split assignment (val carved by patient), decode once into Ray Data, augmentation
  method.py    a training method: which parameters train, how the model is wrapped (peft), what a
               checkpoint keeps; each trainable protocol defines its own (finetune, lora, bitfit, dora)
  model.py     backbone + linear head, built with its method
  memory.py    the memory estimate before any worker starts: node type, micro-batch, checkpointing, FSDP
  step.py      one optimiser step of the effective batch in micro-batches (gradient accumulation)
  loop.py      train_loop_per_worker: train, validate, checkpoint, resume
  fit.py       one TorchTrainer fit, its best checkpoint, scoring a checkpoint
  search.py    the learning-rate search as Ray Tune trials
  protocol.py  the shared TrainParams and run(): search, select on val, score test once
Modules import torch and Ray lazily where planning might import them.
"""
