//! `$filter`: `<column> eq|ne <literal>` terms joined by `and`/`or`, grouped
//! in parentheses; literals 'strings' (with '' escapes), GUIDs, integers,
//! true/false, null. String comparison is case-insensitive, as Dataverse's
//! collation makes it.

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Str,
    Guid,
    Int,
    Bool,
    DateTime,
}

impl Kind {
    pub(super) fn edm(self) -> &'static str {
        match self {
            Kind::Str => "Edm.String",
            Kind::Guid => "Edm.Guid",
            Kind::Int => "Edm.Int32",
            Kind::Bool => "Edm.Boolean",
            Kind::DateTime => "Edm.DateTimeOffset",
        }
    }
}

pub(super) enum Literal {
    Str(String),
    Guid(String),
    Int(i64),
    Bool(bool),
    Null,
}

pub(super) enum Filter {
    Cmp {
        column: String,
        ne: bool,
        literal: Literal,
    },
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
}

impl Filter {
    pub(super) fn parse(text: &str) -> Result<Filter, Reply> {
        let mut parser = FilterParser {
            chars: text.chars().collect(),
            pos: 0,
            text,
        };
        let expr = parser.or()?;
        parser.skip_ws();
        if parser.pos < parser.chars.len() {
            return Err(parser.error());
        }
        Ok(expr)
    }

    pub(super) fn eval(&self, row: &Map<String, Value>) -> bool {
        match self {
            Filter::And(a, b) => a.eval(row) && b.eval(row),
            Filter::Or(a, b) => a.eval(row) || b.eval(row),
            Filter::Cmp {
                column,
                ne,
                literal,
            } => {
                let value = row.get(column).unwrap_or(&Value::Null);
                let equal = match literal {
                    Literal::Str(s) | Literal::Guid(s) => value
                        .as_str()
                        .is_some_and(|v| v.to_lowercase() == s.to_lowercase()),
                    Literal::Int(i) => value.as_i64() == Some(*i),
                    Literal::Bool(b) => value.as_bool() == Some(*b),
                    Literal::Null => value.is_null(),
                };
                equal != *ne
            }
        }
    }
}

pub(super) struct FilterParser<'a> {
    chars: Vec<char>,
    pos: usize,
    text: &'a str,
}

impl FilterParser<'_> {
    pub(super) fn error(&self) -> Reply {
        query_syntax(&format!(
            "Syntax error at position {} in '{}'.",
            self.pos, self.text
        ))
    }

    pub(super) fn skip_ws(&mut self) {
        while self.chars.get(self.pos).is_some_and(|c| c.is_whitespace()) {
            self.pos += 1;
        }
    }

    /// Consumes the keyword if it comes next, as a whole word.
    pub(super) fn keyword(&mut self, word: &str) -> bool {
        self.skip_ws();
        let end = self.pos + word.len();
        if end > self.chars.len() {
            return false;
        }
        let found: String = self.chars[self.pos..end].iter().collect();
        let boundary = self
            .chars
            .get(end)
            .is_none_or(|c| c.is_whitespace() || *c == '(');
        if found == word && boundary {
            self.pos = end;
            true
        } else {
            false
        }
    }

    pub(super) fn or(&mut self) -> Result<Filter, Reply> {
        let mut left = self.and()?;
        while self.keyword("or") {
            let right = self.and()?;
            left = Filter::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    pub(super) fn and(&mut self) -> Result<Filter, Reply> {
        let mut left = self.primary()?;
        while self.keyword("and") {
            let right = self.primary()?;
            left = Filter::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    pub(super) fn word(&mut self) -> String {
        let start = self.pos;
        while self
            .chars
            .get(self.pos)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
        {
            self.pos += 1;
        }
        self.chars[start..self.pos].iter().collect()
    }

    pub(super) fn primary(&mut self) -> Result<Filter, Reply> {
        self.skip_ws();
        if self.chars.get(self.pos) == Some(&'(') {
            self.pos += 1;
            let inner = self.or()?;
            self.skip_ws();
            if self.chars.get(self.pos) != Some(&')') {
                return Err(self.error());
            }
            self.pos += 1;
            return Ok(inner);
        }
        let column = self.word();
        if column.is_empty() {
            return Err(self.error());
        }
        self.skip_ws();
        let operator = self.word();
        let ne = match operator.as_str() {
            "eq" => false,
            "ne" => true,
            _ => return Err(self.error()),
        };
        self.skip_ws();
        let literal = self.literal()?;
        Ok(Filter::Cmp {
            column,
            ne,
            literal,
        })
    }

    pub(super) fn literal(&mut self) -> Result<Literal, Reply> {
        if self.chars.get(self.pos) == Some(&'\'') {
            self.pos += 1;
            let mut out = String::new();
            loop {
                match self.chars.get(self.pos) {
                    None => return Err(self.error()),
                    Some('\'') if self.chars.get(self.pos + 1) == Some(&'\'') => {
                        out.push('\'');
                        self.pos += 2;
                    }
                    Some('\'') => {
                        self.pos += 1;
                        return Ok(Literal::Str(out));
                    }
                    Some(c) => {
                        out.push(*c);
                        self.pos += 1;
                    }
                }
            }
        }
        let start = self.pos;
        while self
            .chars
            .get(self.pos)
            .is_some_and(|c| !c.is_whitespace() && *c != ')')
        {
            self.pos += 1;
        }
        let token: String = self.chars[start..self.pos].iter().collect();
        match token.as_str() {
            "null" => Ok(Literal::Null),
            "true" => Ok(Literal::Bool(true)),
            "false" => Ok(Literal::Bool(false)),
            _ => {
                if let Some(guid) = parse_guid(&token) {
                    Ok(Literal::Guid(guid))
                } else if let Ok(n) = token.parse::<i64>() {
                    Ok(Literal::Int(n))
                } else {
                    self.pos = start;
                    Err(self.error())
                }
            }
        }
    }
}
