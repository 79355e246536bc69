"""Factories used by the intake tests as `tests/models_for_tests.py:build`."""
import torch


def build():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 3))


def broken():
    raise RuntimeError("factory exploded")


class Outlier(torch.nn.Module):
    """A small classifier with one layer int8 destroys: ``fc2``'s weights hold one huge column (1e4) next to
    ordinary ones. Its input channel there is always 0, so in float the column adds nothing; per-channel int8
    weights give every other weight of a row a step of 1e4/127 and round them to 0."""

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(64, 32)
        self.fc2 = torch.nn.Linear(32, 32)
        self.head = torch.nn.Linear(32, 2)
        with torch.no_grad():
            self.fc1.weight[0] = 0.0
            self.fc1.bias[0] = 0.0
            self.fc2.weight[:, 0] = 1e4

    def forward(self, x):
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def outlier():
    return Outlier()


def vit_hf(layers: int = 2, hidden: int = 64, image: int = 32, patch: int = 8, labels: int = 10):
    """A transformers ViTForImageClassification built from its config (random init, as a fine-tuned ViT would
    arrive without its hub download); the ViT-Ti shape is ``vit_hf(12, 192, 224, 16, 1000)``."""
    from transformers import ViTConfig, ViTForImageClassification
    config = ViTConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                       intermediate_size=4 * hidden, image_size=image, patch_size=patch, num_labels=labels,
                       attn_implementation="sdpa")
    return ViTForImageClassification(config).eval()


def vit_hf_2x192():
    """2 layers of ViT-Ti width at 32 px (4 patches of 16): its class token is ~25x smaller than its patch tokens
    (random init), so per-tensor int8 of the residual stream fails parity on ONNX Runtime (cosine 0.973)."""
    return vit_hf(layers=2, hidden=192, image=32, patch=16)


def vit_hf_small():
    return vit_hf()


def vit_hf_4x192():
    return vit_hf(layers=4, hidden=192, image=64, patch=16)


def tiny_vit():
    """A 2-block ViT on 16x16 RGB (4x4 patches, dim 16): psaq's smallest customer."""
    from edge.zoo.vit import VisionTransformer
    torch.manual_seed(2)
    return VisionTransformer(img_size=16, patch_size=4, in_chans=3, num_classes=4, embed_dim=16, depth=2,
                             num_heads=2).eval()


def tiny_bn():
    """Conv + BatchNorm (with non-trivial running statistics) + linear head: bn-stats' customer."""
    torch.manual_seed(3)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4))
    with torch.no_grad():
        m[1].running_mean.uniform_(-0.5, 0.5)
        m[1].running_var.uniform_(0.5, 2.0)
    return m.eval()


def tiny_gru():
    """A GRU classifier on [1, 1, 8, 8] images (rows as steps): no attention, no BatchNorm (the fallback)."""
    from edge.zoo.gru import GRUClassifier
    torch.manual_seed(4)
    return GRUClassifier(input_size=8, hidden_size=8, num_classes=4).eval()


def digits_vit():
    """The trained digits ViT as a plain factory model (so it comes without the zoo's test set)."""
    from edge.zoo import create_model
    return create_model("vit_tiny_digits")[0]
