"""ppfr.attack - the privacy evaluation, a tool on top of the system: inversion (U-Net) and linkage attacks
on exported bundles, judged by independent recognizers, plus template unlinkability (docs/privacy.md);
`ppfr-attack` (cli.py).

May import anything of ours (it runs bundles through ppfr.bundle and trains with ppfr.train); nothing in
production imports it (tests/test_layout.py).
"""
