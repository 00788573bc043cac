"""Fine-tuning: the records of files, jobs, their events and checkpoints (`finetune.store`),
and the workers that claim queued jobs and train LoRA adapters. Never imports the gateway."""
