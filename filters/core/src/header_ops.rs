//! Envoy's `HeaderValueOption`: one header to add and how it meets a header
//! already there. Every policy that edits headers this way (local rate limit's
//! `*_headers_to_add`, ext_authz's answers) uses this one model; the glue
//! applies it to a header map.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendAction {
    AppendIfExistsOrAdd,
    AddIfAbsent,
    OverwriteIfExistsOrAdd,
    OverwriteIfExists,
}

/// One `HeaderValueOption`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderToAdd {
    pub name: String,
    pub value: String,
    pub action: AppendAction,
    pub keep_empty_value: bool,
}

impl HeaderToAdd {
    /// What to do to a map where the header is (`exists`) or is not there.
    pub fn edit(&self, exists: bool) -> HeaderEdit {
        if self.value.is_empty() && !self.keep_empty_value {
            return HeaderEdit::None;
        }
        match self.action {
            AppendAction::AppendIfExistsOrAdd => HeaderEdit::Add,
            AppendAction::AddIfAbsent if !exists => HeaderEdit::Add,
            AppendAction::OverwriteIfExistsOrAdd => HeaderEdit::Set,
            AppendAction::OverwriteIfExists if exists => HeaderEdit::Set,
            _ => HeaderEdit::None,
        }
    }
}

/// The host call one [`HeaderToAdd`] comes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderEdit {
    /// Leave the map as it is.
    None,
    /// Add a value (a second one if the header exists).
    Add,
    /// Replace every value with this one.
    Set,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(action: AppendAction, value: &str, keep: bool) -> HeaderToAdd {
        HeaderToAdd {
            name: "x".into(),
            value: value.into(),
            action,
            keep_empty_value: keep,
        }
    }

    #[test]
    fn edits_by_action_and_presence() {
        use AppendAction::*;
        use HeaderEdit::{Add, Set};
        let cases = [
            (AppendIfExistsOrAdd, false, Add),
            (AppendIfExistsOrAdd, true, Add),
            (AddIfAbsent, false, Add),
            (AddIfAbsent, true, HeaderEdit::None),
            (OverwriteIfExistsOrAdd, false, Set),
            (OverwriteIfExistsOrAdd, true, Set),
            (OverwriteIfExists, false, HeaderEdit::None),
            (OverwriteIfExists, true, Set),
        ];
        for (action, exists, want) in cases {
            assert_eq!(
                h(action, "v", false).edit(exists),
                want,
                "{action:?} {exists}"
            );
        }
        assert_eq!(
            h(AppendIfExistsOrAdd, "", false).edit(false),
            HeaderEdit::None
        );
        assert_eq!(h(AppendIfExistsOrAdd, "", true).edit(false), Add);
    }
}
