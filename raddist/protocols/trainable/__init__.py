"""What the trainable protocols (protocols/finetune.py, lora.py, bitfit.py) share: one Ray Train loop.

  data.py      split assignment (val carved by patient), decode once into Ray Data, augmentation
  model.py     backbone + linear head; which parameters train; checkpointable state
  loop.py      train_loop_per_worker: train, validate, checkpoint, resume
  fit.py       one TorchTrainer fit, its best checkpoint, scoring a checkpoint
  search.py    the learning-rate search as Ray Tune trials
  protocol.py  the shared TrainParams and run(): search, select on val, score test once
Modules import torch and Ray lazily where planning might import them.
"""
