"""lock: IP-CLIP domain locking of CLIP models, with SL / NTL / CUTI baselines."""
