"""Networks and their weights files: pretrained backbones (:mod:`cifarlit.models.pretrained`) and the files they
and ``model.init_from`` read (:mod:`cifarlit.models.weights`). The other networks still live in
:mod:`cifarlit.nets`."""
