"""ppfr.evaluation: accuracy studies run on exported bundles, the real edge and the real server (raw LFW
photos against aligned crops; several photos enrolled per person). Tools on top: they may import every
ppfr package; nothing in production imports them. Run as `ppfr-bench raw-pairs` and `ppfr-bench pooling`."""
