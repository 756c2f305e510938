//! An ONNX interpreter on libtorch (tch): executes a model's graph node by node with tch
//! tensors, one place per op (the `torch` forward beside each op's gradient rule in
//! `crate::ops`). Parameters are tch variables named by their ONNX initializer names, so libtorch
//! autograd differentiates the interpreted graph: the project's independent reference for the
//! ONNX gradient graph, and the engine of `probe train`.
//!
//! API (to be implemented; see issue 4):
//! - `Interpreter::new(model: &Model, device: tch::Device) -> Result<Interpreter>`: checks that
//!   every node's op has a torch forward (listing all that do not, like the gradient builder).
//! - `Interpreter::forward(&self, state: &State, x: &tch::Tensor, mode: Mode) -> Result<tch::Tensor>`:
//!   the model's first output. In `Mode::Train`, BatchNormalization uses batch statistics and
//!   updates the running statistics in `state` in place (as PyTorch does: biased variance to
//!   normalize, unbiased variance in the running update, ONNX `momentum` m meaning
//!   `running = m * running + (1 - m) * batch`), without recording that update in autograd.
//! - `State`: the model's state tensors by initializer name (`BTreeMap<String, tch::Tensor>`),
//!   parameters with `requires_grad` set for training; `State::from_checkpoint`/`to_checkpoint`
//!   convert to and from `crate::model::Checkpoint` / host tensors.
