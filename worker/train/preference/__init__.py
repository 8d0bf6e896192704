"""Preference tuning (DPO, ORPO, KTO) on the SFT pipeline: data, losses, the Trainer subclass, the guard."""
