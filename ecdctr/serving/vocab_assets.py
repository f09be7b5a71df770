"""Vocabularies as SavedModel assets: at export, every string lookup of a model reads its tokens
from a text file that the SavedModel carries in assets/, so saved_model.pb holds no id list.

Training builds its `StringLookup`s from in-memory lists (the fastest to build and to look
up). Such a table is saved as a graph constant: about 19 bytes of saved_model.pb per id, and
TF Serving parses the whole graph at every load. Within `vocabulary_assets` each lookup's
table is instead a `tf.lookup.StaticHashTable` over a `tf.lookup.TextFileInitializer` (line i
is the token of id i, ids from 1, 0 for any other string: exactly the in-memory mapping);
`tf.saved_model.save` tracks the file as an asset, copies it into assets/ and the loaded
model (TF Serving included) initializes the table from there. The in-memory tables are put
back after the block.

A vocabulary line cannot hold every string: TensorFlow's file reader ends a line at "\n",
drops one "\r" before it and refuses an empty line. A token that is empty, holds "\n" or ends
with "\r" is refused with its feature and row (the build's vocabularies never hold one:
ecdctr/data/vocab.py leaves them out).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as keras

logger = logging.getLogger(__name__)


def string_lookups(model: keras.layers.Layer) -> list[keras.layers.StringLookup]:
    """Every StringLookup the model is or holds (nested layers, dicts of layers), each once."""
    found: dict[int, keras.layers.StringLookup] = {}
    for module in (model, *model.submodules):
        if isinstance(module, keras.layers.StringLookup):
            found.setdefault(id(module), module)
    return list(found.values())


def ordered_tokens(lookup: keras.layers.StringLookup) -> np.ndarray:
    """The lookup's tokens as bytes, token of id i at row i - 1 (ids 1..n; 0 is the OOV id)."""
    if lookup.invert or lookup.mask_token is not None or lookup.num_oov_indices != 1:
        raise ValueError(f"lookup {lookup.name!r}: only a StringLookup with one OOV index, no "
                         f"mask token and not inverted can be saved as a vocabulary file")
    keys, values = (t.numpy() for t in lookup.lookup_table.export())
    order = np.argsort(values, kind="stable")
    if not np.array_equal(values[order], np.arange(1, len(values) + 1)):
        raise ValueError(f"lookup {lookup.name!r}: its ids are not 1..{len(values)}; a "
                         f"vocabulary file numbers its lines consecutively")
    return keys[order]


def vocabulary_text(tokens: np.ndarray, where: str) -> bytes:
    """The vocabulary file of tokens (bytes, in id order): one token per line, or ValueError
    naming the first token that a line cannot hold (empty, with "\\n", ending with "\\r")."""
    text = b"".join(token + b"\n" for token in tokens)
    broken = (text.count(b"\n") != len(tokens)  # a token holds a line feed
              or text.startswith(b"\n") or b"\n\n" in text or b"\r\n" in text)
    if broken:
        row = next(i for i, t in enumerate(tokens) if not t or b"\n" in t or t.endswith(b"\r"))
        raise ValueError(f"{where}: token {row + 1} {tokens[row]!r} cannot be a vocabulary "
                         f"line (it is empty, holds a line feed or ends with a carriage return). "
                         f"Fix: leave such ids out of the vocabulary (the build does) or clean "
                         f"them in the logs")
    return text


def file_table(path: str, size: int, like: tf.lookup.StaticHashTable) -> tf.lookup.StaticHashTable:
    """A hash table mapping line i of path (1-based) to i and anything else to like's default
    value, checked to hold `size` tokens."""
    initializer = tf.lookup.TextFileInitializer(
        path, like.key_dtype, tf.lookup.TextFileIndex.WHOLE_LINE, like.value_dtype,
        tf.lookup.TextFileIndex.LINE_NUMBER, vocab_size=size, value_index_offset=1)
    with tf.init_scope():
        table = tf.lookup.StaticHashTable(initializer, like.default_value)
    if int(table.size()) != size:  # e.g. a token repeated: the table would be smaller
        raise ValueError(f"{path}: {int(table.size())} distinct tokens, expected {size}")
    return table


@contextlib.contextmanager
def vocabulary_assets(model: keras.layers.Layer) -> Iterator[dict[str, int]]:
    """Within the block every StringLookup of the model reads a vocabulary file (an asset of
    whatever tf.saved_model.save writes); yields {asset file name: tokens}. The in-memory tables
    are put back after, and the files (copied into the SavedModel by then) deleted.

    A file is named <lookup name>-<hash of its content>.txt: TensorFlow names a file table's
    shared resource after its path, so two exports with different tokens never share a table
    (not in one process, not in TF Serving holding two versions)."""
    folder = Path(tempfile.mkdtemp(prefix="ecdctr-vocab-"))
    swapped: list[tuple[keras.layers.StringLookup, tf.lookup.StaticHashTable]] = []
    assets: dict[str, int] = {}
    try:
        for lookup in string_lookups(model):
            tokens = ordered_tokens(lookup)
            if not len(tokens):
                continue
            text = vocabulary_text(tokens, f"vocabulary of lookup {lookup.name!r}")
            name = f"{lookup.name}-{hashlib.sha256(text).hexdigest()[:16]}.txt"
            (folder / name).write_bytes(text)  # the same name: the same tokens, one file
            table = file_table(str(folder / name), len(tokens), lookup.lookup_table)
            swapped.append((lookup, lookup.lookup_table))
            lookup.lookup_table = table
            assets[name] = len(tokens)
        logger.info(f"{len(assets)} vocabularies ({sum(assets.values())} tokens) saved as "
                    f"asset files")
        yield assets
    finally:
        for lookup, table in reversed(swapped):
            lookup.lookup_table = table
        shutil.rmtree(folder, ignore_errors=True)
