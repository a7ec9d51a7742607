//! What a publisher says about a model's inputs at bundle build time, on top
//! of what the graph states: pinned or named dimensions
//! (`--input-shape x=1,3,48,-1`), renamed symbols (`--symbol N=batch`) and
//! inputs fixed for the deployment (`--const-input sr=16000`). All of it
//! ends up in the signed manifest.

use ferry_protocol::model::{DType, Dim, Schema, Tensor, TensorData};

#[derive(Debug, thiserror::Error)]
pub enum InputSpecError {
    #[error("--input-shape {0:?}: expected NAME=D,D,… (each D a size, -1 for dynamic, or a symbol name)")]
    ShapeSyntax(String),
    #[error("--symbol {0:?}: expected GRAPH_NAME=NEW_NAME")]
    SymbolSyntax(String),
    #[error("--const-input {0:?}: expected NAME=VALUE[,VALUE…]")]
    ConstSyntax(String),
    #[error("{flag} names input {name:?}, which the model does not have (inputs: {inputs})")]
    UnknownInput {
        flag: &'static str,
        name: String,
        inputs: String,
    },
    #[error("--symbol {0:?}: no input dimension has that name")]
    UnknownSymbol(String),
    #[error("--input-shape {name}: the graph states {graph} dimensions, the flag gives {given}")]
    Rank {
        name: String,
        graph: usize,
        given: usize,
    },
    #[error("--input-shape {name}: dimension {index} is {graph} in the graph, not {given}")]
    Conflict {
        name: String,
        index: usize,
        graph: u64,
        given: String,
    },
    #[error("--const-input {name}: {reason}")]
    ConstValue { name: String, reason: String },
}

/// One dimension as the publisher gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShapeDim {
    Size(u64),
    Dynamic,
    Named(String),
}

/// `NAME=D,D,…` (`--input-shape`).
pub fn parse_input_shape(s: &str) -> Result<(String, Vec<ShapeDim>), InputSpecError> {
    let bad = || InputSpecError::ShapeSyntax(s.to_string());
    let (name, dims) = s.split_once('=').ok_or_else(bad)?;
    if name.is_empty() {
        return Err(bad());
    }
    let dims = if dims.trim().is_empty() {
        Vec::new()
    } else {
        dims.split(',')
            .map(|d| {
                let d = d.trim();
                if d == "-1" || d == "?" {
                    Ok(ShapeDim::Dynamic)
                } else if let Ok(n) = d.parse::<u64>() {
                    Ok(ShapeDim::Size(n))
                } else if !d.is_empty() && d.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    Ok(ShapeDim::Named(d.to_string()))
                } else {
                    Err(bad())
                }
            })
            .collect::<Result<_, _>>()?
    };
    Ok((name.to_string(), dims))
}

/// `GRAPH_NAME=NEW_NAME` (`--symbol`).
pub fn parse_symbol(s: &str) -> Result<(String, String), InputSpecError> {
    match s.split_once('=') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok((a.to_string(), b.to_string())),
        _ => Err(InputSpecError::SymbolSyntax(s.to_string())),
    }
}

/// `NAME=VALUE[,VALUE…]` (`--const-input`); values are typed against the
/// schema later.
pub fn parse_const_input(s: &str) -> Result<(String, String), InputSpecError> {
    match s.split_once('=') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok((a.to_string(), b.to_string())),
        _ => Err(InputSpecError::ConstSyntax(s.to_string())),
    }
}

fn input_names(schema: &Schema) -> String {
    let names: Vec<&str> = schema.inputs.iter().map(|i| i.name.as_str()).collect();
    names.join(", ")
}

/// Renames symbols, then applies the pinned shapes, to the schema's inputs
/// (and renames the same symbols in its outputs).
pub fn apply_shapes(
    schema: &mut Schema,
    symbols: &[(String, String)],
    shapes: &[(String, Vec<ShapeDim>)],
) -> Result<(), InputSpecError> {
    for (from, to) in symbols {
        let mut found = false;
        for spec in schema.inputs.iter_mut() {
            for d in spec.shape.iter_mut() {
                if matches!(d, Dim::Symbolic(s) if s == from) {
                    *d = Dim::Symbolic(to.clone());
                    found = true;
                }
            }
        }
        if !found {
            return Err(InputSpecError::UnknownSymbol(from.clone()));
        }
        for spec in schema.outputs.iter_mut() {
            for d in spec.shape.iter_mut() {
                if matches!(d, Dim::Symbolic(s) if s == from) {
                    *d = Dim::Symbolic(to.clone());
                }
            }
        }
    }
    let inputs = input_names(schema);
    for (name, dims) in shapes {
        let spec = schema
            .inputs
            .iter_mut()
            .find(|i| i.name == *name)
            .ok_or_else(|| InputSpecError::UnknownInput {
                flag: "--input-shape",
                name: name.clone(),
                inputs: inputs.clone(),
            })?;
        if spec.shape.len() != dims.len() {
            return Err(InputSpecError::Rank {
                name: name.clone(),
                graph: spec.shape.len(),
                given: dims.len(),
            });
        }
        for (index, (d, given)) in spec.shape.iter_mut().zip(dims).enumerate() {
            let new = match (&*d, given) {
                (Dim::Fixed(g), ShapeDim::Size(n)) if g != n => {
                    return Err(InputSpecError::Conflict {
                        name: name.clone(),
                        index,
                        graph: *g,
                        given: n.to_string(),
                    })
                }
                (Dim::Fixed(g), ShapeDim::Dynamic | ShapeDim::Named(_)) => {
                    return Err(InputSpecError::Conflict {
                        name: name.clone(),
                        index,
                        graph: *g,
                        given: match given {
                            ShapeDim::Named(s) => s.clone(),
                            _ => "-1".into(),
                        },
                    })
                }
                (_, ShapeDim::Size(n)) => Dim::Fixed(*n),
                (_, ShapeDim::Named(s)) => Dim::Symbolic(s.clone()),
                (Dim::Symbolic(s), ShapeDim::Dynamic) => Dim::Symbolic(s.clone()),
            };
            *d = new;
        }
    }
    Ok(())
}

/// Types each `--const-input` value against its schema input: the values
/// fill the input's shape (a scalar takes one), as its element type.
pub fn const_inputs(
    schema: &Schema,
    given: &[(String, String)],
) -> Result<Vec<Tensor>, InputSpecError> {
    let inputs = input_names(schema);
    given
        .iter()
        .map(|(name, raw)| {
            let spec = schema
                .input(name)
                .ok_or_else(|| InputSpecError::UnknownInput {
                    flag: "--const-input",
                    name: name.clone(),
                    inputs: inputs.clone(),
                })?;
            let bad = |reason: String| InputSpecError::ConstValue {
                name: name.clone(),
                reason,
            };
            let shape: Vec<u64> = spec
                .shape
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => Ok(*n),
                    Dim::Symbolic(s) => Err(bad(format!(
                        "the input's dimension {s:?} is dynamic; pin it with --input-shape first"
                    ))),
                })
                .collect::<Result<_, _>>()?;
            let parts: Vec<&str> = raw.split(',').map(str::trim).collect();
            let count: u64 = shape.iter().product();
            if parts.len() as u64 != count {
                return Err(bad(format!(
                    "{} value(s) for shape {}",
                    parts.len(),
                    spec.shape_string()
                )));
            }
            let num = |p: &str| {
                p.parse::<f64>()
                    .map_err(|_| bad(format!("{p:?} is not a number")))
            };
            let data = match spec.dtype {
                DType::F16 | DType::F32 => TensorData::F32(
                    parts
                        .iter()
                        .map(|p| num(p).map(|v| v as f32))
                        .collect::<Result<_, _>>()?,
                ),
                DType::F64 => {
                    TensorData::F64(parts.iter().map(|p| num(p)).collect::<Result<_, _>>()?)
                }
                DType::Bool => TensorData::Bool(
                    parts
                        .iter()
                        .map(|p| match *p {
                            "true" | "1" => Ok(true),
                            "false" | "0" => Ok(false),
                            _ => Err(bad(format!("{p:?} is not a boolean"))),
                        })
                        .collect::<Result<_, _>>()?,
                ),
                DType::Bytes => return Err(bad("a BYTES input cannot be fixed".into())),
                _ => TensorData::I64(
                    parts
                        .iter()
                        .map(|p| {
                            p.parse::<i64>()
                                .map_err(|_| bad(format!("{p:?} is not an integer")))
                        })
                        .collect::<Result<_, _>>()?,
                ),
            };
            Ok(Tensor {
                name: name.clone(),
                shape,
                data,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx_schema::UNNAMED;
    use ferry_protocol::model::TensorSpec;

    fn schema() -> Schema {
        Schema {
            inputs: vec![
                TensorSpec {
                    name: "x".into(),
                    dtype: DType::F32,
                    shape: vec![
                        Dim::Symbolic("N".into()),
                        Dim::Fixed(3),
                        Dim::Symbolic(UNNAMED.into()),
                        Dim::Symbolic(UNNAMED.into()),
                    ],
                },
                TensorSpec {
                    name: "sr".into(),
                    dtype: DType::I64,
                    shape: vec![],
                },
            ],
            outputs: vec![TensorSpec {
                name: "y".into(),
                dtype: DType::F32,
                shape: vec![Dim::Symbolic("N".into())],
            }],
        }
    }

    #[test]
    fn pins_and_names_dimensions() {
        let mut s = schema();
        let shape = parse_input_shape("x=1,3,48,-1").unwrap();
        apply_shapes(&mut s, &[parse_symbol("N=batch").unwrap()], &[shape]).unwrap();
        assert_eq!(
            s.inputs[0].shape,
            vec![
                Dim::Fixed(1),
                Dim::Fixed(3),
                Dim::Fixed(48),
                Dim::Symbolic(UNNAMED.into())
            ]
        );
        assert_eq!(s.outputs[0].shape, vec![Dim::Symbolic("batch".into())]);
        let mut s = schema();
        apply_shapes(&mut s, &[], &[parse_input_shape("x=batch,3,h,w").unwrap()]).unwrap();
        assert_eq!(s.inputs[0].shape[2], Dim::Symbolic("h".into()));
    }

    #[test]
    fn refuses_what_contradicts_the_graph() {
        let mut s = schema();
        for (flag, want) in [
            ("x=1,4,48,48", "is 3 in the graph"),
            ("x=1,3,48", "states 4 dimensions"),
            ("z=1", "does not have"),
        ] {
            let e = apply_shapes(&mut s, &[], &[parse_input_shape(flag).unwrap()])
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{flag}: {e}");
        }
        assert!(parse_input_shape("x=1,a b").is_err());
        assert!(apply_shapes(&mut s, &[("M".into(), "b".into())], &[]).is_err());
    }

    #[test]
    fn const_inputs_are_typed_by_the_schema() {
        let s = schema();
        let t = const_inputs(&s, &[parse_const_input("sr=16000").unwrap()]).unwrap();
        assert_eq!(t[0].data, TensorData::I64(vec![16000]));
        assert!(t[0].shape.is_empty());
        for (raw, want) in [
            ("sr=16k", "not an integer"),
            ("sr=1,2", "2 value(s)"),
            ("x=1", "dynamic"),
        ] {
            let e = const_inputs(&s, &[parse_const_input(raw).unwrap()])
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{raw}: {e}");
        }
    }
}
