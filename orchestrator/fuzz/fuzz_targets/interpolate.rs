//! Fuzzes `${VAR}` interpolation on its own: any template must expand or fail, never panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_orchestrator::compose::interpolate::substitute;

fn lookup(name: &str) -> Option<String> {
    match name {
        "SET" => Some("value".into()),
        "EMPTY" => Some(String::new()),
        // A value that itself looks like a template: it must be taken literally.
        "DOLLAR" => Some("${SET}$$".into()),
        "UNICODE" => Some("é€😀".into()),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(template) = std::str::from_utf8(data) else { return };
    if let Ok(expanded) = substitute(template, &lookup) {
        // Expansion only ever removes `$` syntax or inserts values; a template without `$`
        // comes back unchanged.
        if !template.contains('$') {
            assert_eq!(expanded, template);
        }
    }
});
