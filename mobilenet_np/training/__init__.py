"""The training path of mobilenet-np: gradients of every layer and of the transformers losses, optimizers.

* `backward`: cs231n-style pairs `out, cache = x_forward(...)` / `dx, ... = x_backward(dout, cache)` for
  every layer of MobileNet V1/V2 and DeepLabV3 (convolutions, BatchNorm in train and eval mode, ReLU/ReLU6,
  pooling, linear, dropout, bilinear resizing, concatenation, residual add), each backward beside a
  `x_backward_naive` loop twin.
* `losses`: the losses transformers computes (cross-entropy with ignore_index, MSE, BCE-with-logits, the
  classification problem-type rule, the segmentation loss), each returning the loss and d loss / d logits.
* `optim`: torch.optim's SGD and RMSprop, TensorFlow's RMSProp, TF-slim parameter groups, learning-rate
  schedules and a moving average of the weights.

Everything here is checked against `torch.autograd` / `torch.optim` in float64 (tests/test_backward.py,
tests/test_losses.py, tests/test_optim.py).
"""
