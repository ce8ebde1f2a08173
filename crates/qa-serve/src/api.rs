//! The Hugging Face inference API for question answering, on the wire: a request body
//! becomes questions and settings, answers become its JSON shape. What HF clients send:
//! `{"inputs": {"question": Q, "context": C} | [{...}, ...], "parameters": {...}}`.

use qa_infer::{Answer, InferSettings};
use serde_json::{json, Map, Value};

use crate::error::ApiError;

/// Every parameter of the HF question-answering API, and whether we honour it. The ignored
/// ones are accepted so that clients which send them work unchanged (README: "ignored").
pub const PARAMETERS: [(&str, bool); 7] = [
    ("top_k", true),
    ("max_answer_len", true),
    ("doc_stride", true),
    ("max_seq_len", true),
    ("handle_impossible_answer", true),
    // Our windows never truncate the question (run_qa.py's `only_second`).
    ("max_question_len", false),
    // Answers are token spans: they start and end where the tokenizer's tokens do.
    ("align_to_words", false),
];

/// Top-level keys besides `inputs`: HF's `options` (`use_cache`, `wait_for_model`) mean
/// nothing to a local server and are ignored.
const IGNORED_KEYS: [&str; 2] = ["parameters", "options"];

#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub question: String,
    pub context: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiRequest {
    pub items: Vec<Item>,
    /// `inputs` was a list: the response is a list too, one entry per item.
    pub list: bool,
    pub settings: InferSettings,
}

/// Parses a request body; `defaults` are the server's settings, which parameters override;
/// `max_positions` bounds `max_seq_len` (the model's position embeddings).
pub fn parse(
    body: &[u8],
    defaults: InferSettings,
    max_positions: usize,
) -> Result<ApiRequest, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
    let Value::Object(top) = value else {
        return Err(ApiError::bad_request(
            "the body must be a JSON object with \"inputs\"",
        ));
    };
    if let Some(key) = top
        .keys()
        .find(|k| *k != "inputs" && !IGNORED_KEYS.contains(&k.as_str()))
    {
        return Err(ApiError::bad_request(format!("unknown field \"{key}\"")));
    }
    let (items, list) = match top.get("inputs") {
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(ApiError::bad_request("inputs: an empty list"))
        }
        Some(Value::Array(items)) => {
            let parsed = items
                .iter()
                .enumerate()
                .map(|(k, v)| item(v, &format!("inputs[{k}]")));
            (parsed.collect::<Result<_, _>>()?, true)
        }
        Some(v) => (vec![item(v, "inputs")?], false),
        None => return Err(ApiError::bad_request("missing field \"inputs\"")),
    };
    let settings = match top.get("parameters") {
        None | Some(Value::Null) => defaults,
        Some(Value::Object(p)) => parameters(p, defaults, max_positions)?,
        Some(_) => return Err(ApiError::bad_request("parameters: must be an object")),
    };
    Ok(ApiRequest {
        items,
        list,
        settings,
    })
}

fn item(value: &Value, at: &str) -> Result<Item, ApiError> {
    let Value::Object(fields) = value else {
        return Err(ApiError::bad_request(format!(
            "{at}: must be an object with \"question\" and \"context\""
        )));
    };
    if let Some(key) = fields.keys().find(|k| *k != "question" && *k != "context") {
        return Err(ApiError::bad_request(format!(
            "{at}: unknown field \"{key}\""
        )));
    }
    let text = |name: &str| match fields.get(name) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(ApiError::bad_request(format!("{at}.{name}: is empty"))),
        Some(_) => Err(ApiError::bad_request(format!(
            "{at}.{name}: must be a string"
        ))),
        None => Err(ApiError::bad_request(format!("{at}.{name}: is missing"))),
    };
    Ok(Item {
        question: text("question")?,
        context: text("context")?,
    })
}

fn parameters(
    given: &Map<String, Value>,
    defaults: InferSettings,
    max_positions: usize,
) -> Result<InferSettings, ApiError> {
    let mut s = defaults;
    for (name, value) in given {
        let at = format!("parameters.{name}");
        if !PARAMETERS.iter().any(|(known, _)| known == name) {
            return Err(ApiError::bad_request(format!(
                "unknown parameter \"{name}\""
            )));
        }
        if value.is_null() {
            continue;
        }
        match name.as_str() {
            "top_k" => s.top_k = count(value, &at, 1)?,
            "max_answer_len" => s.max_answer_length = count(value, &at, 1)?,
            "doc_stride" => s.stride = count(value, &at, 0)?,
            "max_seq_len" => s.max_length = count(value, &at, 8)?,
            "max_question_len" => {
                count(value, &at, 1)?;
            }
            "handle_impossible_answer" => s.handle_impossible_answer = flag(value, &at)?,
            _ => {
                flag(value, &at)?;
            }
        }
    }
    if s.max_length > max_positions {
        return Err(ApiError::bad_request(format!(
            "parameters.max_seq_len: {} is more than the model's {max_positions} positions",
            s.max_length
        )));
    }
    if s.stride + 3 >= s.max_length {
        return Err(ApiError::bad_request(format!(
            "parameters.doc_stride: {} must be below max_seq_len - 3 ({})",
            s.stride,
            s.max_length - 3
        )));
    }
    Ok(s)
}

fn count(value: &Value, at: &str, least: u64) -> Result<usize, ApiError> {
    match value.as_u64() {
        Some(n) if n >= least => Ok(n as usize),
        _ => Err(ApiError::bad_request(format!(
            "{at}: must be an integer >= {least}"
        ))),
    }
}

fn flag(value: &Value, at: &str) -> Result<bool, ApiError> {
    value
        .as_bool()
        .ok_or_else(|| ApiError::bad_request(format!("{at}: must be true or false")))
}

/// The response: per item, the best answer as an object (`top_k` 1) or a list of the best
/// `top_k`; a list of those when the request's `inputs` was a list.
pub fn response(answers: &[Vec<Answer>], top_k: usize, list: bool) -> Value {
    let per_item: Vec<Value> = answers
        .iter()
        .map(|a| {
            if top_k == 1 {
                a.first().map_or_else(no_answer, answer_json)
            } else {
                Value::Array(a.iter().map(answer_json).collect())
            }
        })
        .collect();
    if list {
        Value::Array(per_item)
    } else {
        per_item.into_iter().next().unwrap_or_else(no_answer)
    }
}

fn answer_json(a: &Answer) -> Value {
    json!({"answer": a.answer, "score": a.score, "start": a.start, "end": a.end})
}

/// No span fits (a context without tokens): HF's shape, empty.
fn no_answer() -> Value {
    json!({"answer": "", "score": 0.0, "start": 0, "end": 0})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(body: &str) -> Result<ApiRequest, ApiError> {
        parse(body.as_bytes(), InferSettings::default(), 512)
    }

    fn error(body: &str) -> String {
        parse_str(body).unwrap_err().message
    }

    #[test]
    fn one_input_with_parameters() {
        let r = parse_str(
            r#"{"inputs": {"question": "Who?", "context": "Me."},
                "parameters": {"top_k": 3, "max_answer_len": 5, "doc_stride": 64,
                               "max_seq_len": 256, "handle_impossible_answer": true,
                               "align_to_words": false, "max_question_len": 64}}"#,
        )
        .unwrap();
        assert!(!r.list);
        assert_eq!(r.items[0].question, "Who?");
        let s = r.settings;
        assert_eq!(
            (s.top_k, s.max_answer_length, s.stride, s.max_length),
            (3, 5, 64, 256)
        );
        assert!(s.handle_impossible_answer);
    }

    #[test]
    fn defaults_without_parameters_and_lists() {
        let r = parse_str(
            r#"{"inputs": [{"question": "a", "context": "b"}, {"question": "c", "context": "d"}]}"#,
        )
        .unwrap();
        assert!(r.list);
        assert_eq!(r.items.len(), 2);
        assert_eq!(r.settings, InferSettings::default());
    }

    #[test]
    fn errors_name_the_field() {
        assert!(error("{").starts_with("invalid JSON"));
        assert_eq!(
            error(r#"{"inputs": {"question": "", "context": "b"}}"#),
            "inputs.question: is empty"
        );
        assert_eq!(
            error(r#"{"inputs": {"question": 3, "context": "b"}}"#),
            "inputs.question: must be a string"
        );
        assert_eq!(
            error(r#"{"inputs": {"question": "a"}}"#),
            "inputs.context: is missing"
        );
        assert_eq!(
            error(
                r#"{"inputs": [{"question": "a", "context": "b"}, {"question": "a", "context": " "}]}"#
            ),
            "inputs[1].context: is empty"
        );
        assert_eq!(
            error(
                r#"{"inputs": {"question": "a", "context": "b"}, "parameters": {"temperature": 1}}"#
            ),
            "unknown parameter \"temperature\""
        );
        assert_eq!(
            error(r#"{"inputs": {"question": "a", "context": "b"}, "parameters": {"top_k": 0}}"#),
            "parameters.top_k: must be an integer >= 1"
        );
        assert!(error(
            r#"{"inputs": {"question": "a", "context": "b"}, "parameters": {"max_seq_len": 1024}}"#
        )
        .contains("512 positions"));
        assert!(error(
            r#"{"inputs": {"question": "a", "context": "b"}, "parameters": {"doc_stride": 384}}"#
        )
        .starts_with("parameters.doc_stride"));
        assert_eq!(error(r#"{"question": "a"}"#), "unknown field \"question\"");
        assert_eq!(
            error(r#"[1]"#),
            "the body must be a JSON object with \"inputs\""
        );
    }

    #[test]
    fn response_shapes() {
        let a = Answer {
            answer: "Me".into(),
            start: 0,
            end: 2,
            score: 0.5,
        };
        let one = response(&[vec![a.clone()]], 1, false);
        assert_eq!(one["answer"], "Me");
        let two = response(&[vec![a.clone(), a.clone()]], 2, false);
        assert_eq!(two.as_array().unwrap().len(), 2);
        let list = response(&[vec![a.clone()], vec![]], 1, true);
        assert_eq!(list[1]["answer"], "");
    }
}
