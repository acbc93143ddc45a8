//! Parses and validates the arguments of `#[meter(...)]` into [`MeterArgs`].
//!
//! Every mistake is collected (not just the first), each spanned on the token at fault, so
//! one build shows them all.

use proc_macro2::{Span, TokenStream};
use quote::ToTokens as _;
use syn::ext::IdentExt as _;
use syn::parse::{ParseStream, Parser as _};
use syn::{Expr, ExprLit, Ident, Lit, LitStr, Path, Token, UnOp};

/// The longest feature code Kinde accepts, in bytes.
const MAX_CODE_LEN: usize = 255;

/// One key `#[meter]` accepts.
struct Key {
    name: &'static str,
    /// An example value, for messages.
    example: &'static str,
    /// Validates the value and stores it.
    apply: fn(&mut Fields, Expr) -> syn::Result<()>,
}

/// The keys `#[meter]` accepts, in the order the docs list them. Parsing is driven by this
/// table: duplicates, unknown keys and suggestions are handled once for all keys.
const KEYS: &[Key] = &[
    Key {
        name: "feature",
        example: "\"api_calls\"",
        apply: |fields, value| {
            fields.feature = Some(feature(value)?);
            Ok(())
        },
    },
    Key {
        name: "value",
        example: "items.len()",
        apply: |fields, value| {
            fields.value = Some(meter_value(value)?);
            Ok(())
        },
    },
    Key {
        name: "agreement",
        example: "&request.agreement",
        apply: |fields, value| {
            fields.agreement = Some(agreement(value)?);
            Ok(())
        },
    },
    Key {
        name: "customer",
        example: "&claims.customer",
        apply: |fields, value| {
            fields.customer = Some(value);
            Ok(())
        },
    },
    Key {
        name: "on",
        example: "\"return\"",
        apply: |fields, value| {
            let on = choice("on", On::NAMES, &value)?;
            fields.on = Some((on, value_span(&value)));
            Ok(())
        },
    },
    Key {
        name: "meter_type",
        example: "\"absolute\"",
        apply: |fields, value| {
            let kind = choice("meter_type", MeterKind::NAMES, &value)?;
            fields.meter_type = Some(kind);
            Ok(())
        },
    },
    Key {
        name: "crate",
        example: "::kinde_meter",
        apply: |fields, value| {
            fields.krate = Some(crate_path(value)?);
            Ok(())
        },
    },
];

/// When a call counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum On {
    /// When the call starts (an async fn: when first polled).
    Call,
    /// When the call returns normally.
    Return,
    /// When the call returns a success.
    Ok,
}

impl On {
    const NAMES: &'static [(&'static str, On)] =
        &[("call", On::Call), ("return", On::Return), ("ok", On::Ok)];
}

/// How Kinde applies the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MeterKind {
    /// Added to the current usage.
    Delta,
    /// Replaces the current usage.
    Absolute,
}

impl MeterKind {
    const NAMES: &'static [(&'static str, MeterKind)] = &[
        ("delta", MeterKind::Delta),
        ("absolute", MeterKind::Absolute),
    ];
}

/// The validated arguments.
pub(crate) struct MeterArgs {
    /// The billing feature code, validated.
    pub(crate) feature: LitStr,
    /// `value = <expr>`, if given (the default is 1).
    pub(crate) value: Option<Expr>,
    /// `agreement = <expr>`, if given (the default is the agreement in scope).
    pub(crate) agreement: Option<Expr>,
    /// `customer = <expr>`, if given: usage resolved to one of its agreements later.
    /// Never together with `agreement`.
    pub(crate) customer: Option<Expr>,
    /// `on = ...` and the span of its literal (the default is `Call`, spanned on the
    /// attribute).
    pub(crate) on: (On, Span),
    /// `meter_type = ...` (the default is `Delta`).
    pub(crate) meter_type: MeterKind,
    /// `crate = path`, if given (the default is `::kinde_meter`).
    pub(crate) krate: Option<Path>,
}

/// Collects errors so that all of them are reported together.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    fn finish<T>(self, value: impl FnOnce() -> T) -> syn::Result<T> {
        match self.0 {
            Some(error) => Err(error),
            None => Ok(value()),
        }
    }
}

/// What has been read so far.
#[derive(Default)]
struct Fields {
    feature: Option<LitStr>,
    value: Option<Expr>,
    agreement: Option<Expr>,
    customer: Option<Expr>,
    on: Option<(On, Span)>,
    meter_type: Option<MeterKind>,
    krate: Option<Path>,
    /// A mistake already reported says that `feature` is missing (a misspelt key, a
    /// positional string): no "missing `feature`" on top of it.
    misspelt_feature: bool,
}

/// Parses the tokens inside `#[meter(...)]`.
pub(crate) fn parse(args: TokenStream) -> syn::Result<MeterArgs> {
    let parser = |input: ParseStream<'_>| {
        let mut errors = Errors::default();
        let mut fields = Fields::default();
        let mut seen: Vec<String> = Vec::new();
        parse_entries(input, &mut fields, &mut seen, &mut errors);
        // An unknown key that looks like `feature` was already reported with that hint.
        if !seen.iter().any(|k| k == "feature") && !fields.misspelt_feature {
            errors.push(syn::Error::new(
                Span::call_site(),
                "missing `feature`: name the Kinde billing feature this function meters, \
                 e.g. `#[meter(feature = \"api_calls\")]`",
            ));
        }
        if let (Some(_), Some(customer)) = (&fields.agreement, &fields.customer) {
            errors.push(syn::Error::new_spanned(
                customer,
                "`customer` and `agreement` both say whom to bill: keep `agreement` to bill \
                 that agreement, or `customer` to bill the agreement the customer has",
            ));
        }
        errors.finish(|| MeterArgs {
            // Present whenever no error was recorded: `feature` was seen and valid.
            feature: fields
                .feature
                .unwrap_or_else(|| LitStr::new("", Span::call_site())),
            value: fields.value,
            agreement: fields.agreement,
            customer: fields.customer,
            on: fields.on.unwrap_or((On::Call, Span::call_site())),
            meter_type: fields.meter_type.unwrap_or(MeterKind::Delta),
            krate: fields.krate,
        })
    };
    parser.parse2(args)
}

/// Reads `key = value` entries separated by commas until the end, recovering after each
/// mistake at the next comma.
fn parse_entries(
    input: ParseStream<'_>,
    fields: &mut Fields,
    seen: &mut Vec<String>,
    errors: &mut Errors,
) {
    while !input.is_empty() {
        if let Err(e) = parse_entry(input, fields, seen, errors) {
            errors.push(e);
            skip_past_comma(input);
            continue;
        }
        if input.is_empty() {
            break;
        }
        if let Err(e) = input.parse::<Token![,]>() {
            errors.push(e);
            skip_past_comma(input);
        }
    }
}

/// Skips tokens up to and including the next top-level comma.
fn skip_past_comma(input: ParseStream<'_>) {
    let _ = input.step(|cursor| {
        let mut rest = *cursor;
        while let Some((tt, next)) = rest.token_tree() {
            rest = next;
            if let proc_macro2::TokenTree::Punct(p) = &tt
                && p.as_char() == ','
            {
                break;
            }
        }
        Ok(((), rest))
    });
}

fn parse_entry(
    input: ParseStream<'_>,
    fields: &mut Fields,
    seen: &mut Vec<String>,
    errors: &mut Errors,
) -> syn::Result<()> {
    if input.peek(LitStr) {
        let lit: LitStr = input.parse()?;
        fields.misspelt_feature = true;
        return Err(syn::Error::new(
            lit.span(),
            format!(
                "arguments are named: write `feature = {}`",
                lit.to_token_stream()
            ),
        ));
    }
    if !input.peek(Ident::peek_any) {
        return Err(input.error(format!(
            "expected an argument such as `feature = \"api_calls\"` (valid keys: {})",
            key_list()
        )));
    }
    let key = input.call(Ident::parse_any)?;
    let name = key.to_string();
    let known = KEYS.iter().find(|k| k.name == name);

    if input.is_empty() || input.peek(Token![,]) {
        return Err(match known {
            Some(known) => {
                // Reported here; not "missing" as well.
                seen.push(name.clone());
                syn::Error::new(
                    key.span(),
                    format!("`{name}` needs a value: `{name} = {}`", known.example),
                )
            }
            None => unknown_key(&key, &name, fields),
        });
    }
    input.parse::<Token![=]>()?;
    let value: Expr = input.parse()?;

    let Some(known) = known else {
        errors.push(unknown_key(&key, &name, fields));
        return Ok(());
    };
    let duplicate = seen.contains(&name);
    if duplicate {
        errors.push(syn::Error::new(
            key.span(),
            format!("duplicate `{name}` argument: give each key once"),
        ));
    } else {
        seen.push(name);
    }
    // The value of a duplicate is still checked, so every mistake shows at once; it is
    // not kept.
    let mut scratch = Fields::default();
    let target = if duplicate { &mut scratch } else { fields };
    if let Err(e) = (known.apply)(target, value) {
        errors.push(e);
    }
    Ok(())
}

/// An unknown key, with the closest valid one when there is a likely one.
fn unknown_key(key: &Ident, name: &str, fields: &mut Fields) -> syn::Error {
    let nearest = nearest_key(name);
    if nearest == Some("feature") {
        fields.misspelt_feature = true;
    }
    let valid = key_list();
    let message = match nearest {
        Some(best) => {
            format!("unknown argument `{name}`: did you mean `{best}`? (valid keys: {valid})")
        }
        None => format!("unknown argument `{name}` (valid keys: {valid})"),
    };
    syn::Error::new(key.span(), message)
}

/// The valid keys, for messages.
fn key_list() -> String {
    KEYS.iter()
        .map(|k| format!("`{}`", k.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The valid key closest to `name`, if it is close enough to be a likely typo.
fn nearest_key(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    KEYS.iter()
        .map(|k| k.name)
        .map(|k| {
            let distance = edit_distance(&lower, k);
            // A key that contains the unknown word (`type` in `meter_type`) or the other
            // way round is a likely match too.
            let contains = lower.len() >= 3 && (k.contains(&lower) || lower.contains(k));
            (k, distance, contains)
        })
        .filter(|&(k, distance, contains)| {
            contains || distance <= 2.max(k.len().min(lower.len()) / 3)
        })
        .min_by_key(|&(_, distance, contains)| (!contains && distance > 0, distance))
        .map(|(k, _, _)| k)
}

/// Levenshtein distance, on bytes (keys are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == cb {
                diagonal
            } else {
                1 + diagonal.min(above).min(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The value without the invisible groups it arrives in when a `macro_rules!` macro
/// passes it as a fragment (`$f:literal`, `$f:expr`, `$p:path`, nested macros: one group
/// each). What is inside keeps its own spans, so errors still point at what was written.
fn ungroup(value: &Expr) -> &Expr {
    match value {
        Expr::Group(group) => ungroup(&group.expr),
        other => other,
    }
}

/// The span to report a value at: the literal's own span when it is one.
fn value_span(value: &Expr) -> Span {
    match ungroup(value) {
        Expr::Lit(ExprLit { lit, .. }) => lit.span(),
        other => syn::spanned::Spanned::span(other),
    }
}

fn string_literal(value: &Expr) -> Option<&LitStr> {
    match ungroup(value) {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Some(s),
        _ => None,
    }
}

fn feature(value: Expr) -> syn::Result<LitStr> {
    let Some(lit) = string_literal(&value) else {
        return Err(syn::Error::new_spanned(
            ungroup(&value),
            "`feature` must be a string literal: the Kinde billing feature code, \
             e.g. `feature = \"api_calls\"`",
        ));
    };
    let code = lit.value();
    if code.is_empty() {
        return Err(syn::Error::new(
            lit.span(),
            "`feature` must not be empty: give the Kinde billing feature code, \
             e.g. `feature = \"api_calls\"`",
        ));
    }
    if code.len() > MAX_CODE_LEN {
        return Err(syn::Error::new(
            lit.span(),
            format!(
                "`feature` is {} bytes long; Kinde feature codes are at most {MAX_CODE_LEN}",
                code.len()
            ),
        ));
    }
    if let Some(bad) = code
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(syn::Error::new(
            lit.span(),
            format!(
                "`feature` contains {bad:?}: a Kinde feature code may only contain ASCII \
                 letters, digits, `_`, `-` and `.`"
            ),
        ));
    }
    Ok(lit.clone())
}

/// `value` may be any expression; a literal must be a non-negative integer.
fn meter_value(value: Expr) -> syn::Result<Expr> {
    if let Some((negative, lit)) = literal(&value) {
        // Spanned on the whole literal, sign included.
        let error = |message: String| syn::Error::new_spanned(ungroup(&value), message);
        match lit {
            Lit::Int(int) if negative => {
                return Err(error(format!(
                    "`value` must not be negative: usage is counted up (`-{int}` was given)"
                )));
            }
            Lit::Int(int) if matches!(int.suffix(), "f32" | "f64") => {
                return Err(error(format!(
                    "`value` must be a whole number of units: `{}{int}` is a float",
                    if negative { "-" } else { "" }
                )));
            }
            Lit::Int(int) => {
                if int.base10_parse::<u64>().is_err() {
                    return Err(error(format!(
                        "`value` {int} does not fit in a `u64`, the largest value Kinde takes"
                    )));
                }
            }
            Lit::Float(float) => {
                return Err(error(format!(
                    "`value` must be a whole number of units: `{}{float}` is a float",
                    if negative { "-" } else { "" }
                )));
            }
            other => {
                return Err(syn::Error::new_spanned(
                    other,
                    "`value` must be an integer (a literal such as `3`, or an expression \
                     such as `items.len()`)",
                ));
            }
        }
    }
    Ok(value)
}

/// The literal `value` is, looking through parentheses and a leading minus sign.
fn literal(value: &Expr) -> Option<(bool, &Lit)> {
    match value {
        Expr::Lit(ExprLit { lit, .. }) => Some((false, lit)),
        Expr::Paren(p) => literal(&p.expr),
        Expr::Group(g) => literal(&g.expr),
        Expr::Unary(u) if matches!(u.op, UnOp::Neg(_)) => {
            literal(&u.expr).map(|(negative, lit)| (!negative, lit))
        }
        _ => None,
    }
}

/// `agreement` may be any expression; a string literal must be a valid agreement id.
fn agreement(value: Expr) -> syn::Result<Expr> {
    if let Some(lit) = string_literal(&value) {
        let id = lit.value();
        let valid = !id.is_empty()
            && id.len() <= MAX_CODE_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(syn::Error::new(
                lit.span(),
                "`agreement` is not a valid customer agreement id: 1 to 255 ASCII letters, \
                 digits, `_` and `-`, like `agreement_0195ac80a14c2ca2cec97d026d864de0`",
            ));
        }
    }
    Ok(value)
}

/// A string literal that must be one of `names`.
fn choice<T: Copy>(key: &str, names: &[(&str, T)], value: &Expr) -> syn::Result<T> {
    let expected = names
        .iter()
        .map(|(n, _)| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let Some(lit) = string_literal(value) else {
        // `on = return` or `meter_type = Absolute`: say how to write it.
        let value = ungroup(value);
        let written = value.to_token_stream().to_string().to_ascii_lowercase();
        let message = match names.iter().find(|(n, _)| *n == written) {
            Some((n, _)) => format!("`{key}` takes a string: write `{key} = \"{n}\"`"),
            None => format!("`{key}` must be a string literal, one of {expected}"),
        };
        return Err(syn::Error::new_spanned(value, message));
    };
    let given = lit.value();
    names
        .iter()
        .find(|(n, _)| *n == given)
        .map(|&(_, v)| v)
        .ok_or_else(|| {
            syn::Error::new(
                lit.span(),
                format!("invalid `{key}` value {given:?}: expected one of {expected}"),
            )
        })
}

fn crate_path(value: Expr) -> syn::Result<Path> {
    match ungroup(&value).clone() {
        Expr::Path(p)
            if p.qself.is_none()
                && p.attrs.is_empty()
                && p.path
                    .segments
                    .iter()
                    .all(|s| matches!(s.arguments, syn::PathArguments::None)) =>
        {
            Ok(p.path)
        }
        other => Err(syn::Error::new_spanned(
            other,
            "`crate` must be a path to the kinde-meter crate, e.g. `crate = ::kinde_meter`",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn messages(args: TokenStream) -> Vec<String> {
        match parse(args) {
            Ok(_) => Vec::new(),
            Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn defaults() {
        let args = parse(quote!(feature = "api_calls")).map_err(|e| e.to_string());
        let args = args.as_ref().map_err(String::as_str);
        let Ok(args) = args else {
            panic!("{args:?}", args = args.err())
        };
        assert_eq!(args.feature.value(), "api_calls");
        assert!(args.value.is_none() && args.agreement.is_none() && args.krate.is_none());
        assert_eq!(args.on.0, On::Call);
        assert_eq!(args.meter_type, MeterKind::Delta);
    }

    #[test]
    fn every_key() {
        let parsed = parse(quote!(
            feature = "a.b-c_d",
            value = items.len(),
            agreement = &self.agreement,
            on = "ok",
            meter_type = "absolute",
            crate = ::my::kinde_meter,
        ));
        let Ok(args) = parsed else {
            panic!("{:?}", parsed.err().map(|e| e.to_string()))
        };
        assert_eq!(args.on.0, On::Ok);
        assert_eq!(args.meter_type, MeterKind::Absolute);
        assert!(args.value.is_some() && args.agreement.is_some() && args.krate.is_some());
    }

    #[test]
    fn all_mistakes_are_reported() {
        let all = messages(quote!(
            feture = "x",
            value = -1,
            on = "never",
            value = 1.5,
            meter_type = delta
        ));
        // No `missing feature` either: the misspelt key already says it.
        assert_eq!(all.len(), 6, "{all:#?}");
        assert!(all[0].contains("did you mean `feature`"));
        assert!(all[1].contains("negative"));
        assert!(all[2].contains("\"call\", \"return\", \"ok\""));
        assert!(all[3].contains("duplicate `value`"));
        assert!(all[4].contains("float"));
        assert!(all[5].contains("write `meter_type = \"delta\"`"));
        // `missing feature` comes last.
        let all = messages(quote!(value = 2));
        assert_eq!(all.len(), 1);
        assert!(all[0].starts_with("missing `feature`"));
    }

    /// Every pair of keys parses together, in either order, and every key given twice is
    /// one duplicate error on its second occurrence (the copy-paste bug class where one
    /// key's check looks at another key cannot hide here).
    #[test]
    fn every_pair_of_keys() {
        let valid: Vec<(&str, TokenStream)> = vec![
            ("value", quote!(value = rows.len())),
            ("agreement", quote!(agreement = &self.agreement)),
            ("customer", quote!(customer = &self.customer)),
            ("on", quote!(on = "return")),
            ("meter_type", quote!(meter_type = "absolute")),
            ("crate", quote!(crate = ::kinde_meter)),
        ];
        assert_eq!(valid.len() + 1, KEYS.len());
        for (a, first) in &valid {
            for (b, second) in &valid {
                let all = messages(quote!(feature = "f", #first, #second));
                let whom = |k: &str| k == "agreement" || k == "customer";
                if a != b && whom(a) && whom(b) {
                    assert_eq!(all.len(), 1, "{a} then {b}: {all:?}");
                    assert!(all[0].contains("both say whom to bill"), "{all:?}");
                } else if a == b {
                    assert_eq!(all.len(), 1, "{a} twice: {all:?}");
                    assert!(all[0].starts_with(&format!("duplicate `{a}`")), "{all:?}");
                } else {
                    assert!(all.is_empty(), "{a} then {b}: {all:?}");
                }
            }
        }
    }

    #[test]
    fn feature_rules() {
        assert!(
            messages(quote!(feature = ""))
                .concat()
                .contains("must not be empty")
        );
        assert!(
            messages(quote!(feature = "two words"))
                .concat()
                .contains("' '")
        );
        assert!(
            messages(quote!(feature = API))
                .concat()
                .contains("string literal")
        );
        let long = "a".repeat(256);
        assert!(
            messages(quote!(feature = #long))
                .concat()
                .contains("256 bytes")
        );
        let max = "a".repeat(255);
        assert!(messages(quote!(feature = #max)).is_empty());
    }

    #[test]
    fn values() {
        assert!(messages(quote!(feature = "f", value = 0)).is_empty());
        assert!(messages(quote!(feature = "f", value = 18446744073709551615)).is_empty());
        assert!(
            messages(quote!(feature = "f", value = 18446744073709551616))
                .concat()
                .contains("does not fit")
        );
        assert!(
            messages(quote!(feature = "f", value = (-3)))
                .concat()
                .contains("negative")
        );
        assert!(messages(quote!(feature = "f", value = -x)).is_empty());
        assert!(
            messages(quote!(feature = "f", value = "3"))
                .concat()
                .contains("integer")
        );
        assert!(
            messages(quote!(feature = "f", value = 2.0))
                .concat()
                .contains("float")
        );
        assert!(
            messages(quote!(feature = "f", value = 2f64))
                .concat()
                .contains("float")
        );
        assert!(messages(quote!(feature = "f", value = 2u8)).is_empty());
    }

    /// What a `macro_rules!` fragment (`$f:literal`, `$f:expr`, `$p:path`) becomes: the
    /// tokens in an invisible group, one more per macro that forwards it.
    fn invisible(tokens: TokenStream) -> TokenStream {
        proc_macro2::TokenTree::Group(proc_macro2::Group::new(
            proc_macro2::Delimiter::None,
            tokens,
        ))
        .into()
    }

    #[test]
    fn macro_rules_fragments() {
        let feature = invisible(invisible(quote!("api_calls")));
        let value = invisible(quote!(rows.len()));
        let agreement = invisible(quote!("agreement_acme"));
        let on = invisible(quote!("ok"));
        let kind = invisible(invisible(quote!("absolute")));
        let krate = invisible(quote!(::my::kinde_meter));
        let parsed = parse(quote!(
            feature = #feature,
            value = #value,
            agreement = #agreement,
            on = #on,
            meter_type = #kind,
            crate = #krate,
        ));
        let Ok(args) = parsed else {
            panic!("{:?}", parsed.err().map(|e| e.to_string()))
        };
        assert_eq!(args.feature.value(), "api_calls");
        assert_eq!(args.on.0, On::Ok);
        assert_eq!(args.meter_type, MeterKind::Absolute);
        assert_eq!(
            args.krate.map(|p| p.to_token_stream().to_string()),
            Some(":: my :: kinde_meter".to_owned())
        );

        // The same checks as without the group.
        let bad = |key: TokenStream, value: TokenStream| {
            let value = invisible(value);
            messages(quote!(feature = "f", #key = #value)).concat()
        };
        assert!(bad(quote!(feature), quote!("two words")).contains("' '"));
        assert!(bad(quote!(feature), quote!(API)).contains("string literal"));
        assert!(bad(quote!(value), invisible(quote!(-1))).contains("negative"));
        assert!(bad(quote!(agreement), quote!("a b")).contains("agreement id"));
        assert!(bad(quote!(on), quote!(return)).contains("write `on = \"return\"`"));
        assert!(bad(quote!(meter_type), quote!("sum")).contains("invalid `meter_type`"));
        assert!(bad(quote!(crate), quote!("kinde_meter")).contains("path"));
    }

    #[test]
    fn suggestions() {
        assert_eq!(nearest_key("feture"), Some("feature"));
        assert_eq!(nearest_key("Feature"), Some("feature"));
        assert_eq!(nearest_key("vaule"), Some("value"));
        assert_eq!(nearest_key("agrement"), Some("agreement"));
        assert_eq!(nearest_key("type"), Some("meter_type"));
        assert_eq!(nearest_key("meter"), Some("meter_type"));
        assert_eq!(nearest_key("one"), Some("on"));
        assert_eq!(nearest_key("krate"), Some("crate"));
        assert_eq!(nearest_key("zzzzzzzz"), None);
    }

    #[test]
    fn shapes() {
        assert!(
            messages(quote!("api_calls"))
                .concat()
                .contains("arguments are named")
        );
        assert!(messages(quote!(feature)).concat().contains("needs a value"));
        assert!(
            messages(quote!(feature = "f", crate = "kinde_meter"))
                .concat()
                .contains("path")
        );
        assert!(
            messages(quote!(feature = "f", agreement = "a b"))
                .concat()
                .contains("agreement id")
        );
        assert!(messages(quote!(feature = "f",)).is_empty());
        // One error each: the positional string and the bare key already say `feature`
        // is missing.
        assert_eq!(messages(quote!("api_calls")).len(), 1);
        assert_eq!(messages(quote!(feature)).len(), 1);
        assert_eq!(messages(quote!(feture)).len(), 1);
        assert_eq!(
            messages(quote!(feature = "f", on = return)),
            ["`on` takes a string: write `on = \"return\"`"]
        );
        assert_eq!(
            messages(quote!(feature = "f", meter_type = Absolute)),
            ["`meter_type` takes a string: write `meter_type = \"absolute\"`"]
        );
    }
}
