//! tract's ONNX front end with Ferry's operators: the tree-ensemble
//! evaluator and the other ONNX-ML operators. Its own module so that both
//! the engine and the constant folding it calls can parse graphs with it.

/// A fresh front end with Ferry's operator builders registered.
pub fn onnx() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    crate::trees::register(&mut onnx);
    crate::onnx_ml::register(&mut onnx);
    onnx
}
