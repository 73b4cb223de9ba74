package instacart

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// parsePackage parses the package's non-test files, with comments.
func parsePackage(t *testing.T) map[string]*ast.File {
	t.Helper()
	names, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	files := map[string]*ast.File{}
	for _, name := range names {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		files[name] = f
	}
	if len(files) == 0 {
		t.Fatal("no source files found")
	}
	return files
}

// handlerFile reports whether name holds Vault handlers: a path's schema,
// parsing and responses, or a secret type's.
func handlerFile(name string) bool {
	return strings.HasPrefix(name, "path_") || strings.HasPrefix(name, "secret_")
}

// registers reports whether fn builds a path or secret type for the
// backend to register.
func registers(fn *ast.FuncDecl) bool {
	if fn.Recv != nil || fn.Type.Results == nil || len(fn.Type.Results.List) != 1 {
		return false
	}
	typ := fn.Type.Results.List[0].Type
	if arr, ok := typ.(*ast.ArrayType); ok {
		typ = arr.Elt
	}
	star, ok := typ.(*ast.StarExpr)
	if !ok {
		return false
	}
	sel, ok := star.X.(*ast.SelectorExpr)
	return ok && (sel.Sel.Name == "Path" || sel.Sel.Name == "Secret")
}

// Data flows down: the handlers call into the files that do the work, never
// the other way, so a token move is found in the file named for it. Only
// backend.go reaches into a handler file, to register its path.
func TestNoFileCallsIntoHandlerFiles(t *testing.T) {
	files := parsePackage(t)
	declaredIn := map[string]string{} // function or method name -> handler file
	registration := map[string]bool{} // functions backend.go may call
	for name, f := range files {
		if !handlerFile(name) {
			continue
		}
		for _, d := range f.Decls {
			if fn, ok := d.(*ast.FuncDecl); ok {
				declaredIn[fn.Name.Name] = name
				registration[fn.Name.Name] = registers(fn)
			}
		}
	}
	if len(declaredIn) == 0 {
		t.Fatal("no handler functions found")
	}
	var bad []string
	for name, f := range files {
		if handlerFile(name) {
			continue
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if fn, ok := n.(*ast.FuncDecl); ok {
				// A method of the same name on another type is not a call
				// into the handler file; only its body is looked at.
				if fn.Body != nil {
					ast.Inspect(fn.Body, func(n ast.Node) bool {
						// A name resolved in the file is a local, not a function.
						if id, ok := n.(*ast.Ident); ok && id.Obj == nil {
							if from, ok := declaredIn[id.Name]; ok && !(name == "backend.go" && registration[id.Name]) {
								bad = append(bad, name+" uses "+id.Name+" from "+from)
							}
						}
						return true
					})
				}
				return false
			}
			return true
		})
	}
	slices.Sort(bad)
	for _, b := range slices.Compact(bad) {
		t.Error(b)
	}
}

// The lifecycle table in lifecycle.go names, as "function (file.go)", the
// function that makes each move: each must still be declared in that file,
// or the table has rotted.
func TestLifecycleTableNamesLiveFunctions(t *testing.T) {
	files := parsePackage(t)
	declared := map[string]map[string]bool{} // file -> function and method names
	for name, f := range files {
		declared[name] = map[string]bool{}
		for _, d := range f.Decls {
			if fn, ok := d.(*ast.FuncDecl); ok {
				declared[name][fn.Name.Name] = true
			}
		}
	}
	var text strings.Builder
	for _, cg := range files["lifecycle.go"].Comments {
		text.WriteString(cg.Text())
	}
	named := regexp.MustCompile(`((?:\w+, )*\w+) \((\w+\.go)\)`)
	pairs := 0
	for _, m := range named.FindAllStringSubmatch(text.String(), -1) {
		file := m[2]
		if declared[file] == nil {
			t.Errorf("the lifecycle table names %s, which is not a file of the package", file)
			continue
		}
		for _, fn := range strings.Split(m[1], ", ") {
			pairs++
			if !declared[file][fn] {
				t.Errorf("the lifecycle table names %s (%s), which is not declared there", fn, file)
			}
		}
	}
	if pairs < 20 {
		t.Errorf("found %d functions named in lifecycle.go's table, want the whole table (20 or more)", pairs)
	}
}
