"""An example of user model code: any class or factory returning an nn.Module will do.

modelpress passes `num_classes` and `input_shape` when the callable takes them, and the
config's `model_args` as further keyword arguments.
"""

from torch import nn


class TinyConvNet(nn.Module):
    def __init__(self, num_classes: int, input_shape=(1, 8, 8), width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(input_shape[0], width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))
