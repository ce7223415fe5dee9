"""Write micro/names.txt, the corpus the micro scripts learn from.

Origin: every name in names.txt is invented by this file. Nothing is downloaded; the corpus is the output of
`python micro/make_names.py` (seeded, so running it again rewrites the same bytes, which a test checks).

The file has two halves of 600 names each, drawn from two made-up "languages" so that the halves really differ:
  lines    1-600  soft names: open syllables, liquids and nasals, vowel endings     (e.g. "nemaia", "veleana")
  lines  601-1200 hard names: the same middle syllables, but a stop consonant and dark vowel at the start and a
                   consonant ending (e.g. "zolagar", "duromekar")
The halves share their middles, so a model of one half already knows part of the other; they start with different
letters (soft: l m n r s v h y f, hard: b d g k t z), so a model can tell from the first letter which kind it writes.
microlora pretrains on the soft half and adapts to the hard half; the other scripts use the whole file.
"""

import os
import random

HALF = 600

SOFT_ONSETS = ["l", "m", "n", "r", "s", "v", "h", "y", "l", "n", "m", "s", "sh", "f"]
SOFT_VOWELS = ["a", "e", "i", "o", "u", "a", "e", "i", "a"]
SOFT_ENDINGS = ["a", "ia", "ela", "ine", "elle", "is", "y", "e", "ira", "ana"]

HARD_ONSETS = ["b", "d", "g", "k", "t", "br", "dr", "gr", "kr", "tr", "st", "z", "g", "k", "d"]
HARD_VOWELS = ["a", "o", "u", "o", "u"]
HARD_CODAS = ["k", "g", "rn", "rd", "d", "m", "k", "t", "n", "r", "x", "g"]
HARD_ENDINGS = ["ar", "ok", "ur", "ik", "ar", "un", "og", "", "", ""]


def soft_name(rng):
    syllables = [rng.choice(SOFT_ONSETS) + rng.choice(SOFT_VOWELS) for _ in range(rng.choice([1, 2, 2, 3]))]
    return "".join(syllables) + rng.choice(SOFT_ENDINGS)


def hard_name(rng):
    # The same middle syllables as the soft names, so a model of one half already knows much of the other;
    # what differs is the start (a stop consonant and a dark vowel) and the consonant ending.
    middle = "".join(rng.choice(SOFT_ONSETS) + rng.choice(SOFT_VOWELS) for _ in range(rng.choice([0, 1, 1, 2])))
    start = rng.choice(HARD_ONSETS) + rng.choice(HARD_VOWELS)
    return start + middle + rng.choice(HARD_CODAS) + rng.choice(HARD_ENDINGS)


def make_half(rng, make_one, taken):
    names = []
    while len(names) < HALF:
        name = make_one(rng)
        if 3 <= len(name) <= 12 and name not in taken:  # unique across the whole file, short enough for the GPTs
            taken.add(name)
            names.append(name)
    return names


def make_names(seed=7):
    rng, taken = random.Random(seed), set()
    return make_half(rng, soft_name, taken) + make_half(rng, hard_name, taken)


if __name__ == "__main__":
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "names.txt")
    with open(path, "w") as f:
        f.write("\n".join(make_names()) + "\n")
    print(f"wrote {2 * HALF} names to {path}")
