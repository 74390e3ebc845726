//! The element paths of the search parameter definitions, evaluated on a resource.

use serde_json::Value;

use super::matcher::reference_type;

/// Collects the nodes a path selects, arrays flattened.
pub(super) fn select<'a>(root: &'a Value, path: &str, out: &mut Vec<&'a Value>) {
    let mut current = vec![root];
    for step in split_path(path) {
        let mut next = Vec::new();
        for node in current {
            step_into(node, step, &mut next);
        }
        current = next;
    }
    out.extend(current);
}

pub(super) fn split_path(path: &str) -> Vec<&str> {
    let mut steps = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in path.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            '.' if depth == 0 => {
                steps.push(&path[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    steps.push(&path[start..]);
    steps
}

pub(super) fn push_flat<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => out.extend(items.iter()),
        other => out.push(other),
    }
}

pub(super) fn step_into<'a>(node: &'a Value, step: &str, out: &mut Vec<&'a Value>) {
    let Some(obj) = node.as_object() else { return };
    let (name, filter) = match step.find(['(', '{']) {
        Some(i) => (&step[..i], Some(&step[i..])),
        None => (step, None),
    };
    let mut found = Vec::new();
    if let Some(choice) = name.strip_suffix("[x]") {
        for (k, v) in obj {
            if k.len() > choice.len()
                && k.starts_with(choice)
                && k[choice.len()..].starts_with(|c: char| c.is_ascii_uppercase())
            {
                push_flat(v, &mut found);
            }
        }
    } else if let Some(v) = obj.get(name) {
        push_flat(v, &mut found);
    }
    match filter {
        None => out.extend(found),
        Some(f) if f.starts_with('{') => {
            let target = f.trim_matches(|c| c == '{' || c == '}');
            out.extend(
                found
                    .into_iter()
                    .filter(|r| reference_type(r) == Some(target)),
            );
        }
        Some(f) => {
            let inner = f.trim_start_matches('(').trim_end_matches(')');
            let Some((field, want)) = inner.split_once('=') else {
                return;
            };
            out.extend(
                found
                    .into_iter()
                    .filter(|n| n.get(field).and_then(Value::as_str) == Some(want)),
            );
        }
    }
}
