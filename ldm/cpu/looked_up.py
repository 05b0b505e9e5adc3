"""An embedding table left as the file has it, read only at the rows a lookup asks for.

CLIP's token table is 49408 rows, of which a prompt reads under 77. As a mapping of a .safetensors file (see
ldm/checkpoints/mapped_safetensors.py), the table's pages enter memory only when read: `LookedUpEmbedding` keeps
it so (settle_dtype in ldm/cpu/packing.py hands it the table in the file's dtype) and converts the looked-up
rows, the same numbers as converting the whole table first. Reading `.weight` converts the whole table once,
and from then on it is a plain embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LookedUpEmbedding(nn.Embedding):
    """nn.Embedding (the same key) that, given `keep_as_read`, looks rows up in the file's table."""

    @classmethod
    def replacing(cls, plain: nn.Embedding) -> LookedUpEmbedding:
        # Given its table, nn.Embedding initialises nothing (an init on the meta device imports torch._dynamo).
        embedding = cls(plain.num_embeddings, plain.embedding_dim, plain.padding_idx, _weight=plain.weight,
                        _freeze=not plain.weight.requires_grad)  # fmt: skip
        embedding.table_as_read, embedding.compute_dtype = None, None
        return embedding

    def plain(self) -> nn.Embedding:
        return nn.Embedding(self.num_embeddings, self.embedding_dim, self.padding_idx, _weight=self.weight,
                            _freeze=not self.weight.requires_grad)  # fmt: skip

    def keep_as_read(self, dtype: torch.dtype) -> None:
        """Hold the table as it is until the whole of it is asked for; lookups give `dtype`."""
        self.table_as_read, self.compute_dtype = self._parameters.pop("weight").detach(), dtype

    def forward(self, ids: Tensor) -> Tensor:
        table = self.__dict__.get("table_as_read")
        if table is None:
            return super().forward(ids)
        return F.embedding(ids, table, self.padding_idx).to(self.compute_dtype)

    def __getattr__(self, name: str):
        if name == "weight" and self.__dict__.get("table_as_read") is not None:
            self._convert_table()
        return super().__getattr__(name)

    def _convert_table(self) -> None:
        table, self.table_as_read = self.table_as_read, None
        if table is not None:
            self.weight = nn.Parameter(table.to(self.compute_dtype), requires_grad=False)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        if self.__dict__.get("table_as_read") is not None:  # converted for the caller; the table stays as read
            destination[prefix + "weight"] = self.table_as_read.to(self.compute_dtype)
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._convert_table()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _apply(self, fn, recurse=True):
        self._convert_table()
        return super()._apply(fn, recurse)
