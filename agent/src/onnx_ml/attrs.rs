//! Reading a node's attributes, with errors that name the operator and the
//! attribute.

use tract_onnx::pb::{AttributeProto, NodeProto};

use super::MlError;

pub(crate) struct Attrs<'a> {
    pub op: &'static str,
    node: &'a NodeProto,
}

impl<'a> Attrs<'a> {
    pub fn new(op: &'static str, node: &'a NodeProto) -> Self {
        Self { op, node }
    }

    fn get(&self, name: &str) -> Option<&'a AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == name)
    }

    pub fn err(&self, attr: &str, reason: impl Into<String>) -> MlError {
        MlError::Attribute {
            op: self.op,
            attr: attr.to_string(),
            reason: reason.into(),
        }
    }

    /// A tensor-valued attribute (`t`), if present.
    pub fn tensor(&self, name: &str) -> Option<&'a tract_onnx::pb::TensorProto> {
        self.get(name).and_then(|a| a.t.as_ref())
    }

    pub fn ints(&self, name: &str) -> Vec<i64> {
        self.get(name).map_or_else(Vec::new, |a| a.ints.clone())
    }

    pub fn int(&self, name: &str) -> Option<i64> {
        self.get(name).map(|a| a.i)
    }

    pub fn float(&self, name: &str) -> Option<f32> {
        self.get(name).map(|a| a.f)
    }

    pub fn floats(&self, name: &str) -> Vec<f32> {
        self.get(name).map_or_else(Vec::new, |a| a.floats.clone())
    }

    pub fn string(&self, name: &str) -> Result<Option<String>, MlError> {
        self.get(name)
            .map(|a| String::from_utf8(a.s.clone()).map_err(|_| self.err(name, "is not UTF-8")))
            .transpose()
    }

    pub fn strings(&self, name: &str) -> Result<Vec<String>, MlError> {
        self.get(name).map_or(Ok(vec![]), |a| {
            a.strings
                .iter()
                .map(|s| String::from_utf8(s.clone()).map_err(|_| self.err(name, "is not UTF-8")))
                .collect()
        })
    }

    /// The `post_transform` attribute (default `NONE`).
    pub fn post_transform(&self) -> Result<super::PostTransform, MlError> {
        let s = self.string("post_transform")?;
        super::PostTransform::parse(s.as_deref().unwrap_or("NONE"))
            .ok_or_else(|| self.err("post_transform", format!("has unknown value {s:?}")))
    }
}
