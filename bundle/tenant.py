"""Sealed templates (issue 27): CKKS encryption of 128-d embeddings under a tenant's key, and the encrypted
scoring that a server holding only the tenant's PUBLIC evaluation context can do. Shared by edge and cloud;
torch-free (tenseal = Microsoft SEAL, numpy).

Parameters: CKKS, N = 8192, coefficient moduli [60, 40, 40, 60] (200 bits), scale 2^40. The Homomorphic
Encryption Standard (homomorphicencryption.org, 2018, Table 1, uniform ternary secret) allows log2(q) <= 218
at N = 8192 for 128-bit classical security; SEAL enforces the same table (sec_level tc128).

Layouts (W = 4096 slots, D = 128 coordinates):
- a template or query is "replicated": slot s holds v[s mod D] (32 copies), one ciphertext;
- a packed block holds W templates in diagonal form for baby-step/giant-step scoring (B = 16 baby steps,
  G = 8 giant steps): diag[k][s] = T_s[(s + k) mod D], stored rotated by -16g (k = 16g + b). A query's
  scores for all W templates are then sum_g rot(sum_b diag'[16g+b] * rot(q, b), 16g): 15 rotations per
  query, 128 products + 8 relinearisations + 7 rotations per block. Putting a template in costs 15
  rotations + 128 masked products (mask = one slot), no decryption.
Pooled scores (the server's plain rule: cosine to the mean of a subject's templates = q.S / |S| with S the
sum of the templates) travel as two encrypted numbers, q.S and |S|^2; the tenant divides after decrypting.

Every ciphertext read from outside goes through `Tenant.load` (size limit, parameters, level, scale); any
SEAL/tenseal failure becomes a SealedError (a ValueError) with one line.
"""

import hashlib
import os

import numpy as np

DIM = 128
POLY_DEGREE = 8192
MODULI = (60, 40, 40, 60)
SCALE = 2.0**40
SLOTS = POLY_DEGREE // 2
BABY = 16
GIANT = DIM // BABY
MAX_CIPHERTEXT_BYTES = 1 << 20  # a fresh level-0 ciphertext is ~330 KB (zstd), raw ~400 KB
MAX_CONTEXT_BYTES = 96 << 20  # the public context (Galois keys for every power-of-two step) is ~35 MB
# CKKS decrypts anything to numbers. Right key: |cosine| <= 1, pooled q.S and |S|^2 <= templates^2. Wrong
# key: each slot uniform in +-(prime / scale) >= +-2^19; 4096 slots all under 1e4: probability ~0.02^4096.
GARBAGE = 1e4


class SealedError(ValueError):
    """A ciphertext or context that cannot be used: unreadable, wrong parameters, wrong tenant."""


def _seal():
    try:
        import tenseal
        from tenseal import sealapi
    except ImportError as err:  # pragma: no cover - tenseal is in the edge and cloud extras
        raise SealedError(
            "sealed templates need tenseal (pip install 'ppfr[edge]' or 'ppfr[cloud]')"
        ) from err
    return tenseal, sealapi


def keygen() -> tuple[bytes, bytes]:
    """A new tenant: (secret context bytes, public evaluation context bytes). The public one holds the
    public, relinearisation and Galois keys and no secret key."""
    ts, _ = _seal()
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, POLY_DEGREE, coeff_mod_bit_sizes=list(MODULI))
    ctx.global_scale = SCALE
    secret = ctx.serialize(
        save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=False
    )
    ctx.generate_galois_keys()
    ctx.generate_relin_keys()
    ctx.make_context_public()
    public = ctx.serialize(
        save_public_key=True, save_secret_key=False, save_galois_keys=True, save_relin_keys=True
    )
    return secret, public


def _via_memfd(write=None, data: bytes | None = None, read=None):
    """sealapi (de)serialises through file paths only: use an anonymous in-memory file, never the disk."""
    fd = os.memfd_create("ppfr-sealed")
    try:
        path = f"/proc/self/fd/{fd}"
        if data is not None:
            os.write(fd, data)
            return read(path)
        write(path)
        return os.pread(fd, os.fstat(fd).st_size, 0)
    finally:
        os.close(fd)


def replicate(vec) -> np.ndarray:
    v = np.asarray(vec, np.float64).reshape(-1)
    if v.shape != (DIM,) or not np.all(np.isfinite(v)):
        raise SealedError(f"an embedding must be {DIM} finite numbers, got shape {v.shape}")
    return np.tile(v, SLOTS // DIM)


class Tenant:
    """One tenant's context: secret (the edge: encrypt, decrypt) or public (the server: encrypt, evaluate)."""

    def __init__(self, context_bytes: bytes, secret: bool = False):
        ts, sa = _seal()
        self._sa = sa
        if not isinstance(context_bytes, bytes | bytearray) or len(context_bytes) > MAX_CONTEXT_BYTES:
            raise SealedError(f"a tenant context is at most {MAX_CONTEXT_BYTES >> 20} MB of bytes")
        try:
            ctx = ts.context_from(bytes(context_bytes))
        except Exception as err:
            raise SealedError(f"not a tenant context ({_short(err)})") from None
        self._check(ctx, secret)
        self.ctx = ctx
        self.seal = ctx.seal_context().data
        self.secret = secret
        self.encoder = sa.CKKSEncoder(self.seal)
        self.evaluator = sa.Evaluator(self.seal)
        self.encryptor = sa.Encryptor(self.seal, ctx.public_key().data)
        self.decryptor = sa.Decryptor(self.seal, ctx.secret_key().data) if secret else None
        self.relin = ctx.relin_keys().data if ctx.has_relin_keys() else None
        self.galois = ctx.galois_keys().data if ctx.has_galois_keys() else None
        chain = [self.seal.first_parms_id()]
        while len(chain) < len(MODULI) - 1:
            chain.append(self.seal.get_context_data(chain[-1]).next_context_data().parms_id())
        self.levels = chain  # parms_id of level 0 (3 primes), 1, 2 (1 prime)
        self.fingerprint = hashlib.sha256(_via_memfd(ctx.public_key().data.save)).hexdigest()

    @staticmethod
    def _check(ctx, secret: bool) -> None:
        parms = ctx.seal_context().data.key_context_data().parms()
        bits = [m.bit_count() for m in parms.coeff_modulus()]
        if parms.poly_modulus_degree() != POLY_DEGREE or tuple(bits) != MODULI:
            raise SealedError(
                f"tenant context parameters {parms.poly_modulus_degree()}/{bits}, expected "
                f"{POLY_DEGREE}/{list(MODULI)}"
            )
        if secret and not ctx.has_secret_key():
            raise SealedError(
                "this is a public tenant context; the edge needs the secret one (tenant keygen)"
            )
        if not secret and ctx.has_secret_key():
            raise SealedError("this tenant context holds the SECRET key: give the server the public one")
        if not secret and not (ctx.has_galois_keys() and ctx.has_relin_keys()):
            raise SealedError("the public tenant context lacks Galois or relinearisation keys")

    # --- bytes <-> ciphertexts ---------------------------------------------------------------------
    def dump(self, ct) -> bytes:
        return _via_memfd(ct.save)

    def load(self, data: bytes, level: int | None = None):
        """A ciphertext from untrusted bytes: size-limited, SEAL-validated, 2 polynomials, this tenant's
        parameters, at `level` if given, scale within a factor 2^4 of 2^40 * 2^40/p (any rescale chain)."""
        if not isinstance(data, bytes | bytearray) or not 0 < len(data) <= MAX_CIPHERTEXT_BYTES:
            raise SealedError(f"a ciphertext is 1 to {MAX_CIPHERTEXT_BYTES} bytes")
        ct = self._sa.Ciphertext()
        try:
            _via_memfd(data=bytes(data), read=lambda p: ct.load(self.seal, p))
            ok = self._sa.is_valid_for(ct, self.seal)
        except Exception as err:
            raise SealedError(f"not a ciphertext of these parameters ({_short(err)})") from None
        if not ok or ct.size() != 2 or ct.parms_id() not in self.levels or not ct.is_ntt_form():
            raise SealedError("not a fresh ciphertext of this tenant's parameters")
        if level is not None and ct.parms_id() != self.levels[level]:
            raise SealedError(f"ciphertext at level {self.levels.index(ct.parms_id())}, expected {level}")
        if not 2.0**36 <= ct.scale <= 2.0**44:
            raise SealedError("ciphertext scale out of range")
        return ct

    # --- encryption (edge, and the server in sealed-gallery mode) ----------------------------------
    def encrypt(self, vec, level: int = 0):
        """The replicated embedding at `level` (0: templates to enroll; 1: queries, smaller)."""
        return self.encrypt_slots(replicate(vec), level)

    def encrypt_slots(self, values, level: int = 0):
        """SLOTS values as they are (e.g. 32 different embeddings side by side: `dot` then scores 32 pairs,
        pair j in slot 128 j; the benchmark's LFW pairs)."""
        values = np.asarray(values, np.float64).reshape(-1)
        if values.shape != (SLOTS,) or not np.all(np.isfinite(values)):
            raise SealedError(f"expected {SLOTS} finite values")
        pt = self._sa.Plaintext()
        self.encoder.encode(list(values), self.levels[0], SCALE, pt)
        ct = self._sa.Ciphertext()
        self.encryptor.encrypt(pt, ct)
        if level:
            self.evaluator.mod_switch_to_inplace(ct, self.levels[level])
        return ct

    def decrypt(self, ct) -> np.ndarray:
        """All slots; SealedError when the values are not what this tenant's key decrypts (another key)."""
        if self.decryptor is None:
            raise SealedError("decrypting needs the tenant's secret context")
        pt = self._sa.Plaintext()
        self.decryptor.decrypt(ct, pt)
        values = np.asarray(self.encoder.decode_double(pt))
        if not np.all(np.abs(values) <= GARBAGE):
            raise SealedError("this ciphertext was not made for this tenant's key (decrypts to garbage)")
        return values

    def decrypt_bytes(self, data: bytes) -> np.ndarray:
        return self.decrypt(self.load(data))

    # --- evaluation (server) -----------------------------------------------------------------------
    def _rotate(self, ct, step: int):
        out = self._sa.Ciphertext()
        self.evaluator.rotate_vector(ct, step, self.galois, out)
        return out

    def window_sum(self, ct):
        """Slot s gets sum of slots s..s+127: with replicated inputs, the dot product in every slot."""
        step = 1
        while step < DIM:
            self.evaluator.add_inplace(ct, self._rotate(ct, step))
            step *= 2
        return ct

    def add(self, cts):
        out = self._sa.Ciphertext()
        cts = list(cts)
        if len(cts) == 1:
            return cts[0]
        self.evaluator.add_many(cts, out)
        return out

    def dot(self, a, b):
        """Encrypted a.b of two replicated ciphertexts (in every slot), one level below the lower one."""
        lower = max(self.levels.index(a.parms_id()), self.levels.index(b.parms_id()))
        a, b = self._at(a, lower), self._at(b, lower)
        out = self._sa.Ciphertext()
        self.evaluator.multiply(a, b, out)
        self.evaluator.relinearize_inplace(out, self.relin)
        self.evaluator.rescale_to_next_inplace(out)
        return self.window_sum(out)

    def dot_plain(self, ct, vec):
        """Encrypted ct.vec for a plaintext query vec (sealed gallery: the server knows the query); vec is
        one embedding (replicated) or SLOTS values laid out like ct."""
        v = np.asarray(vec, np.float64).reshape(-1)
        ct = self._at(ct, 1)  # the product needs one level: dropping the other first makes it cheaper
        pt = self._sa.Plaintext()
        self.encoder.encode(list(v if v.size == SLOTS else replicate(v)), ct.parms_id(), SCALE, pt)
        out = self._sa.Ciphertext()
        self.evaluator.multiply_plain(ct, pt, out)
        self.evaluator.rescale_to_next_inplace(out)
        return self.window_sum(out)

    def _at(self, ct, level: int):
        if ct.parms_id() == self.levels[level]:
            return ct
        out = self._sa.Ciphertext()
        self.evaluator.mod_switch_to(ct, self.levels[level], out)
        return out

    def one_hot(self, slot: int, level: int):
        v = np.zeros(SLOTS)
        v[slot % SLOTS] = 1.0
        pt = self._sa.Plaintext()
        self.encoder.encode(list(v), self.levels[level], SCALE, pt)
        return pt


def _short(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:160]


class PackedBlock:
    """SLOTS templates in diagonal form (see the module docstring); slot s is one template."""

    def __init__(self, tenant: Tenant):
        self.t = tenant
        self.diags = [None] * DIM  # level-1 ciphertexts, None while no template contributes

    def put(self, slot: int, template, remove: bool = False) -> None:
        """Adds (or subtracts, to remove) the level-0 replicated template ciphertext at `slot`. Removing a
        diagonal's last contribution leaves it empty (None) again, as a fresh block's."""
        t = self.t
        if template.parms_id() != t.levels[0]:
            raise SealedError("a packed template must be a level-0 ciphertext")
        masks = [t.one_hot(slot + BABY * g, 0) for g in range(GIANT)]
        for b in range(BABY):
            rotated = t._rotate(template, b) if b else template
            for g in range(GIANT):
                part = t._sa.Ciphertext()
                t.evaluator.multiply_plain(rotated, masks[g], part)
                t.evaluator.rescale_to_next_inplace(part)
                k = BABY * g + b
                if self.diags[k] is None:
                    if remove:
                        t.evaluator.negate_inplace(part)
                    self.diags[k] = part
                elif remove:
                    self._subtract(k, part)
                else:
                    t.evaluator.add_inplace(self.diags[k], part)

    def _subtract(self, k: int, part) -> None:
        # Subtracting the only contribution left gives exact zeros, which SEAL refuses ("result ciphertext
        # is transparent", a RuntimeError): the diagonal is then empty, exactly as before it was put.
        try:
            self.t.evaluator.sub_inplace(self.diags[k], part)
        except RuntimeError as err:
            if "transparent" not in str(err):
                raise
            self.diags[k] = None

    def scores(self, babies, plain: bool):
        """Encrypted scores of all SLOTS templates (slot s = template s) for a query given as its baby
        rotations (`query_babies`): ciphertexts at level 1, or plaintexts (sealed gallery)."""
        t = self.t
        total = None
        for g in range(GIANT):
            parts = []
            for b in range(BABY):
                d = self.diags[BABY * g + b]
                if d is None:
                    continue
                out = t._sa.Ciphertext()
                if plain:
                    t.evaluator.multiply_plain(d, babies[b], out)
                else:
                    t.evaluator.multiply(d, babies[b], out)
                parts.append(out)
            if not parts:
                continue
            acc = t.add(parts)
            if not plain:
                t.evaluator.relinearize_inplace(acc, t.relin)
            acc = t._rotate(acc, BABY * g) if g else acc
            total = acc if total is None else t.add([total, acc])
        if total is None:
            raise SealedError("an empty packed block has no scores")
        t.evaluator.rescale_to_next_inplace(total)
        return total


def encrypt_block(tenant: Tenant, templates) -> PackedBlock:
    """A packed block encrypted directly from up to SLOTS plaintext templates (slot i = row i): 128
    encryptions instead of 15 rotations + 128 products per template. For whoever holds the plaintexts
    at once (the tenant's bulk enrolment; the sealed-gallery server during an Enroll). Same levels and
    scale as `PackedBlock.put`, so both kinds of contribution add."""
    t = tenant
    x = np.asarray(templates, np.float64)
    if x.ndim != 2 or x.shape[1] != DIM or len(x) > SLOTS:
        raise SealedError(f"a block is at most {SLOTS} templates of {DIM} numbers")
    full = np.zeros((SLOTS, DIM))
    full[: len(x)] = x
    last_prime = t.seal.get_context_data(t.levels[0]).parms().coeff_modulus()[-1].value()
    scale = SCALE * SCALE / last_prime  # what put()'s mask product and rescale leave
    rows = np.arange(SLOTS)
    block = PackedBlock(t)
    for k in range(DIM):
        g = k // BABY
        diag = full[rows, (rows + k) % DIM]  # diag[k][s] = T_s[(s + k) mod D]
        pt = t._sa.Plaintext()
        t.encoder.encode(list(np.roll(diag, BABY * g)), t.levels[1], scale, pt)  # stored rotated by -16g
        ct = t._sa.Ciphertext()
        t.encryptor.encrypt(pt, ct)
        block.diags[k] = ct
    return block


def query_babies(tenant: Tenant, query, plain: bool = False) -> list:
    """The 16 baby-step rotations of a query: of its level-1 ciphertext (sealed edge, 15 rotations), or
    plaintexts of the known embedding (sealed gallery, no rotation)."""
    if not plain:
        q = tenant._at(query, 1)
        return [q] + [tenant._rotate(q, b) for b in range(1, BABY)]
    rep = replicate(query)
    babies = []
    for b in range(BABY):
        pt = tenant._sa.Plaintext()
        tenant.encoder.encode(list(np.roll(rep, -b)), tenant.levels[1], SCALE, pt)
        babies.append(pt)
    return babies


def pooled(score_sum: float, norm_sq: float) -> float:
    """The plain pooled score from the two decrypted numbers: q.S / |S| (S = sum of a subject's templates;
    = the cosine to their mean, as cloud/matrix.py scores it in the clear)."""
    return float(score_sum) / max(float(norm_sq), 1e-12) ** 0.5
